"""Capture on PostgreSQL: one plpgsql trigger function, one row trigger per table.

The function stores ``to_jsonb`` row images (so added columns are captured without a
re-install), the primary key built from the column names passed as trigger arguments,
and ``pg_current_xact_id()`` as ``txid`` so the relay can tell which writers have ended.
It runs as its owner (``SECURITY DEFINER``) with a fixed ``search_path``: the legacy
application's role needs no privilege on the bridge's tables. Needs PostgreSQL 13+.
``TRUNCATE`` is not captured.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import inspect, sql
from sqlalchemy.engine import Connection

from legacy_bridge.capture import CapturedTable, sql_literal
from legacy_bridge.tables import CHANGE_TABLE, PREFIX

FUNCTION = f"{PREFIX}capture"
TRIGGER = f"{PREFIX}capture"
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
  );
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

    def schema_name(self, conn: Connection) -> str | None:
        return inspect(conn).default_schema_name

    def database_name(self, conn: Connection) -> str:
        return str(conn.execute(sql.text("SELECT current_database()")).scalar_one())

    def install_triggers(
        self, conn: Connection, tables: Sequence[CapturedTable]
    ) -> list[CapturedTable]:
        quote = conn.dialect.identifier_preparer.quote
        schema = quote(self.schema_name(conn) or "public")
        function = f"{schema}.{quote(FUNCTION)}"
        body = _FUNCTION_BODY % {"change": f"{schema}.{quote(CHANGE_TABLE)}"}
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
            f"SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
            f"AS $strangler${body}$strangler$"
        )
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

    def lock_claims(self, conn: Connection) -> None:
        # an advisory lock, unlike a row lock, does not spend a transaction id
        conn.execute(sql.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CLAIM_LOCK_KEY})
