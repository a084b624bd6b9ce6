"""Capture on PostgreSQL: one plpgsql trigger function, one row trigger per table.

The function stores ``to_jsonb`` row images (so added and dropped columns show up in the
images at once, without touching the triggers), the primary key built from the column
names passed as trigger arguments, and ``pg_current_xact_id()`` as ``txid``: the real,
never reused (64-bit, epoch-extended) id of the writing transaction. The function runs
as its owner (``SECURITY DEFINER``) with a fixed ``search_path``: the legacy application's
role needs no privilege on the bridge's tables. Needs PostgreSQL 13+. ``TRUNCATE`` is not
captured.

By default the function does not notify: the relay polls the change table adaptively
(:mod:`legacy_bridge.wakeup`). ``pg_notify`` makes a committing transaction take a
cluster-wide lock that it holds through its commit record's flush (``PreCommit_Notify``),
so notifying transactions commit one at a time and lose group commit: with 4 concurrent
writers that halved the legacy database's commit throughput here (see
``docs/benchmarks.md``). Installed with ``notify=True`` (``bridge install --notify``, for
legacy databases with few concurrent writers) the function also calls
``pg_notify('strangler_change', '')``: PostgreSQL delivers one notification per committing
transaction (identical notifications of one transaction are folded), at commit, so a
listening relay wakes as soon as a change becomes visible.

``strangler_change`` gets two partial indexes on pending rows (``pos IS NULL``), which
claims read; the unique index on ``pos`` is partial the other way (``pos IS NOT NULL``),
so a captured row costs one index entry less. Install replaces a full ``pos`` index of an
older install, inside its transaction (legacy writes wait for the rebuild of an index
over the claimed rows that retention keeps).

Snapshot chunks read with ``FOR SHARE NOWAIT``: see :mod:`legacy_bridge.snapshot`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import inspect, sql
from sqlalchemy.engine import Connection

from legacy_bridge.capture import CapturedTable, Signature, sql_literal
from legacy_bridge.tables import CHANGE_TABLE, POS_INDEX, PREFIX

FUNCTION = f"{PREFIX}capture"
TRIGGER = f"{PREFIX}capture"
NOTIFY_CHANNEL = "strangler_change"
_CLAIM_LOCK_KEY = int.from_bytes(b"strangl", "big")  # advisory lock shared by relays

_FUNCTION_BODY = """
DECLARE
  old_image jsonb;
  new_image jsonb;
  pk jsonb := '{}'::jsonb;
  pk_column text;
BEGIN
  IF TG_OP <> 'INSERT' THEN old_image := to_jsonb(OLD); END IF;
  IF TG_OP <> 'DELETE' THEN new_image := to_jsonb(NEW); END IF;
  FOREACH pk_column IN ARRAY TG_ARGV LOOP
    pk := pk || jsonb_build_object(pk_column, coalesce(new_image, old_image) -> pk_column);
  END LOOP;
  INSERT INTO %(change)s (txid, table_name, op, pk, before, after, captured_at)
  VALUES (
    pg_current_xact_id()::text::bigint,
    TG_TABLE_NAME,
    CASE TG_OP WHEN 'INSERT' THEN 'c' WHEN 'UPDATE' THEN 'u' ELSE 'd' END,
    pk,
    old_image,
    new_image,
    clock_timestamp()
  );%(notify)s
  RETURN NULL;
END
"""


class PostgresCapture:
    """PostgreSQL implementation of :class:`~legacy_bridge.capture.CaptureDialect`.

    Commit order: ``change_id`` comes from a sequence at insert time, not at commit, so a
    transaction can commit after another one that took higher ids. Claims take only
    visible (committed) pending rows, so a late commit is claimed late, never skipped;
    see :mod:`legacy_bridge.change_log` for why the order of dependent changes holds.
    """

    connector = "postgresql"
    real_txids = True
    captures_new_columns = True
    snapshot_reads_in_python = False
    snapshot_lock = " FOR SHARE NOWAIT"
    notifies = True

    def schema_name(self, conn: Connection) -> str | None:
        return inspect(conn).default_schema_name

    def database_name(self, conn: Connection) -> str:
        return str(conn.execute(sql.text("SELECT current_database()")).scalar_one())

    def _schema(self, conn: Connection) -> str:
        return conn.dialect.identifier_preparer.quote(self.schema_name(conn) or "public")

    def install_support(self, conn: Connection, notify: bool = False) -> None:
        quote = conn.dialect.identifier_preparer.quote
        schema = self._schema(conn)
        body = _FUNCTION_BODY % {
            "change": f"{schema}.{quote(CHANGE_TABLE)}",
            "notify": f"\n  PERFORM pg_notify('{NOTIFY_CHANNEL}', '');" if notify else "",
        }
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {schema}.{quote(FUNCTION)}() RETURNS trigger "
            f"LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
            f"AS $strangler${body}$strangler$"
        )
        target = f"{schema}.{quote(CHANGE_TABLE)}"
        self._make_pos_index_partial(conn, target)
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS ix_strangler_change_pending ON {target} (change_id)"
            " WHERE pos IS NULL"
        )
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS ix_strangler_change_pending_tx ON {target}"
            " (txid, change_id) WHERE pos IS NULL"
        )

    def _make_pos_index_partial(self, conn: Connection, target: str) -> None:
        """Replace a full unique index on ``pos`` (older installs) by the partial one
        the table now declares; in the install's transaction, so ``pos`` stays unique."""
        full = conn.execute(
            sql.text(
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = to_regclass(:table) AND c.relname = :index"
                " AND i.indpred IS NULL"
            ),
            {"table": target, "index": POS_INDEX},
        ).first()
        if full:
            index = f"{self._schema(conn)}.{conn.dialect.identifier_preparer.quote(POS_INDEX)}"
            conn.exec_driver_sql(f"DROP INDEX {index}")
            conn.exec_driver_sql(
                f"CREATE UNIQUE INDEX {POS_INDEX} ON {target} (pos) WHERE pos IS NOT NULL"
            )

    def signature(self, conn: Connection, table: CapturedTable) -> Signature:
        return tuple((column, "value") for column in table.columns)

    def install_triggers(
        self, conn: Connection, tables: Sequence[CapturedTable]
    ) -> list[CapturedTable]:
        quote = conn.dialect.identifier_preparer.quote
        schema = self._schema(conn)
        function = f"{schema}.{quote(FUNCTION)}"
        installed = []
        for table in tables:
            target = f"{schema}.{quote(table.name)}"
            arguments = ", ".join(sql_literal(column) for column in table.primary_key)
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(TRIGGER)} ON {target}")
            conn.exec_driver_sql(
                f"CREATE TRIGGER {quote(TRIGGER)} AFTER INSERT OR UPDATE OR DELETE ON {target} "
                f"FOR EACH ROW EXECUTE FUNCTION {function}({arguments})"
            )
            installed.append(
                CapturedTable(table.name, table.primary_key, table.columns, (TRIGGER,))
            )
        return installed

    def remove(self, conn: Connection) -> list[str]:
        quote = conn.dialect.identifier_preparer.quote
        schema = self.schema_name(conn) or "public"
        rows = conn.execute(
            sql.text(
                "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE p.proname = :function AND n.nspname = :schema ORDER BY c.relname"
            ),
            {"function": FUNCTION, "schema": schema},
        ).scalars()
        dropped = [f"trigger {TRIGGER} on {name}" for name in rows]
        exists = conn.execute(
            sql.text(
                "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE p.proname = :function AND n.nspname = :schema"
            ),
            {"function": FUNCTION, "schema": schema},
        ).first()
        if exists:
            # CASCADE drops the triggers that use the function, and nothing else
            conn.exec_driver_sql(f"DROP FUNCTION {quote(schema)}.{quote(FUNCTION)}() CASCADE")
            dropped.append(f"function {FUNCTION}")
        return dropped

    def remove_triggers(self, conn: Connection, table: str) -> list[str]:
        quote = conn.dialect.identifier_preparer.quote
        conn.exec_driver_sql(
            f"DROP TRIGGER IF EXISTS {quote(TRIGGER)} ON {self._schema(conn)}.{quote(table)}"
        )
        return [f"trigger {TRIGGER} on {table}"]

    def lock_claims(self, conn: Connection) -> None:
        # an advisory lock, unlike a row lock, does not spend a transaction id
        conn.execute(sql.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CLAIM_LOCK_KEY})

    def begin_chunk(self, conn: Connection) -> int:
        return int(conn.execute(sql.text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())

    def end_chunk(self, conn: Connection) -> None:
        conn.execute(sql.text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})

    def row_image(self, conn: Connection, table: CapturedTable, alias: str) -> str:
        return f"to_jsonb({alias})"

    def key_image(self, conn: Connection, table: CapturedTable, alias: str) -> str:
        quote = conn.dialect.identifier_preparer.quote
        parts = ", ".join(f"{sql_literal(c)}, {alias}.{quote(c)}" for c in table.primary_key)
        return f"jsonb_build_object({parts})"

    def now(self) -> str:
        return "clock_timestamp()"

    def estimate_rows(self, conn: Connection, table: str) -> int | None:
        quote = conn.dialect.identifier_preparer.quote
        estimate = conn.execute(
            sql.text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": f"{self._schema(conn)}.{quote(table)}"},
        ).scalar()
        return None if estimate is None or estimate < 0 else int(estimate)

    def schema_token(self, conn: Connection) -> object | None:
        return None
