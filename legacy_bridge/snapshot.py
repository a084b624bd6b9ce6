"""The initial snapshot: existing rows of captured tables as op ``r`` changes.

How it works: the snapshot writes its rows *into the change table*, where the relay
publishes them like any change. It walks each table in primary-key chunks; one chunk is
one transaction that

1. finds the chunk's end: the key of the ``chunk_size + 1``-th row from the chunk's
   start (none: this is the table's last chunk);
2. reads the chunk's rows with a share lock that does not wait (``FOR SHARE NOWAIT`` on
   PostgreSQL, ``LOCK IN SHARE MODE NOWAIT`` on MariaDB; on SQLite the chunk holds the
   write lock) and inserts one ``r`` row per row, with the same images the triggers
   write, in the same statement (``INSERT ... SELECT``; on MariaDB the rows are read
   first and inserted with ``VALUES``, see :mod:`legacy_bridge.capture_mariadb`);
3. stores where the next chunk starts in ``strangler_snapshot_progress``.

Why no change is lost or doubled between snapshot rows and the changes streamed meanwhile:
a chunk is a transaction that touches (share-locks) the rows it reads, so the argument of
:mod:`legacy_bridge.change_log` applies to it like to any writer. A writer that changed a
row before the chunk locked it has committed (NOWAIT: otherwise the chunk fails and is
retried), so its change has a lower id than the chunk's ``r`` row, which shows the
changed row; a writer that changes the row after the chunk read it waits for the chunk's
commit, so its change has a higher id. Either way the stream holds, for each row, its
changes and its ``r`` image in the order they happened: applying ``r`` as an upsert,
``c``/``u``/``d`` as usual, yields the table. A row inserted after its chunk was read
is not in the snapshot, and its ``c`` is in the stream. Rows whose key moves out of the
chunk's range are skipped by the chunk, their ``u`` carries them. Because the chunk
never waits for a lock, it cannot deadlock with legacy writers (it would be the one to
fail and retry, never them).

Resumable: the ``r`` rows and the progress of a chunk commit together; after a crash the
snapshot continues at the first chunk not committed, with nothing read twice. Memory stays
flat: a chunk's rows never enter Python except on MariaDB (one chunk at a time).
Not Netflix's DBLog: no watermark rows, the handover is the chunk transaction itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from legacy_bridge.capture import CaptureDialect, CapturedTable, dialect_for
from legacy_bridge.change_log import check_installed
from legacy_bridge.database import make_engine
from legacy_bridge.errors import UnknownTable
from legacy_bridge.registry import registered
from legacy_bridge.tables import ALWAYS_CAPTURED, CHANGE_TABLE, change, snapshot_progress

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 5000
"""Rows per chunk. Each chunk is a transaction (a commit flush, progress, a few
statements): 300,000 rows took 7.9 s in chunks of 1,000 and 5.5 s in chunks of 5,000 on
the benchmark machine. A chunk share-locks its rows only while it copies them (tens of
milliseconds at this size); a legacy writer holding one of them makes it fail and retry,
never wait."""


class Progress(Protocol):
    """A progress display for one table (``tqdm`` fits)."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, "int | None", int], Progress]
"""Called with the table, its estimated row count and the rows already read."""


@dataclass(frozen=True)
class TableSnapshot:
    """One table's snapshot: rows read by this run, in total, and whether it is done."""

    table: str
    rows: int
    total: int
    done: bool
    already_done: bool = False


def snapshot(
    legacy_db: str | Engine,
    tables: Sequence[str] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    restart: bool = False,
    progress: ProgressFactory | None = None,
    attempts: int = 200,
) -> list[TableSnapshot]:
    """Snapshot ``tables`` (default: every captured table, in install order, except the
    origin marker table, whose rows only mean something inside their transactions).

    A table whose snapshot is done is skipped unless ``restart``; an interrupted one
    continues where it stopped. A chunk that meets a locked row or a lost connection is
    retried (up to ``attempts`` times, with backoff).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    engine, owned = make_engine(legacy_db)
    try:
        with engine.connect() as conn:
            dialect = dialect_for(conn)
            schema = dialect.schema_name(conn)
            check_installed(conn, schema)
            known = {r.table.name: r.table for r in registered(conn, schema)}
        names = list(tables) if tables is not None else list(known)
        if tables is None:
            names = [name for name in names if name not in ALWAYS_CAPTURED]
        for name in names:
            if name in ALWAYS_CAPTURED:
                raise UnknownTable(
                    f"table {name!r} holds origin markers of transactions, not legacy "
                    "state: it is not snapshotted"
                )
            if name not in known:
                raise UnknownTable(
                    f"table {name!r} is not captured: run 'strangler bridge install "
                    f"--tables ...' with it first"
                )
        return [
            _snapshot_table(engine, dialect, known[name], chunk_size, restart, progress, attempts)
            for name in names
        ]
    finally:
        if owned:
            engine.dispose()


def _snapshot_table(
    engine: Engine,
    dialect: CaptureDialect,
    table: CapturedTable,
    chunk_size: int,
    restart: bool,
    progress: ProgressFactory | None,
    attempts: int,
) -> TableSnapshot:
    with engine.begin() as conn:
        state = _start(conn, table.name, restart)
        estimate = dialect.estimate_rows(conn, table.name)
    if state["done"]:
        total = int(state["rows_read"])
        return TableSnapshot(table.name, 0, total, True, already_done=True)
    bar = progress(table.name, estimate, int(state["rows_read"])) if progress else None
    retrying = Retrying(
        retry=retry_if_exception_type((sa_exc.OperationalError, sa_exc.InterfaceError)),
        wait=wait_random_exponential(multiplier=0.02, max=1.0),
        stop=stop_after_attempt(attempts),
        before_sleep=lambda state: log.info(
            "snapshot chunk of %s retried: %s", table.name, _summary(state)
        ),
        reraise=True,
    )
    read = 0
    try:
        while True:
            inserted, done = retrying(_chunk, engine, dialect, table, chunk_size)
            read += inserted
            if bar is not None:
                bar.update(inserted)
            if done:
                break
    finally:
        if bar is not None:
            bar.close()
    with engine.connect() as conn:
        total = conn.execute(
            select(snapshot_progress.c.rows_read).where(
                snapshot_progress.c.table_name == table.name
            )
        ).scalar_one()
    return TableSnapshot(table.name, read, int(total), True)


def _summary(state: RetryCallState) -> str:
    error = state.outcome.exception() if state.outcome else None
    return (str(error) or type(error).__name__).splitlines()[0]


def _start(conn: Connection, name: str, restart: bool) -> dict[str, Any]:
    now = datetime.now(UTC)
    where = snapshot_progress.c.table_name == name
    row = conn.execute(select(snapshot_progress).where(where)).mappings().first()
    fresh = {"next_from": None, "rows_read": 0, "done": False, "started_at": now, "updated_at": now}
    if row is None:
        conn.execute(insert(snapshot_progress).values(table_name=name, **fresh))
        return fresh
    if restart:
        conn.execute(update(snapshot_progress).where(where).values(**fresh))
        return fresh
    return dict(row)


def _chunk(
    engine: Engine, dialect: CaptureDialect, table: CapturedTable, chunk_size: int
) -> tuple[int, bool]:
    """Snapshot the next chunk of ``table`` in one transaction; (rows, table done)."""
    with engine.begin() as conn:
        txid = dialect.begin_chunk(conn)
        where = snapshot_progress.c.table_name == table.name
        stored = conn.execute(select(snapshot_progress.c.next_from).where(where)).scalar()
        start = None if stored is None else tuple(json.loads(stored))
        end = _chunk_end(conn, table, start, chunk_size)
        inserted = _copy_rows(conn, dialect, table, txid, start, end)
        if end is None and inserted:
            last = conn.execute(
                select(func.max(change.c.change_id)).where(
                    change.c.txid == txid, change.c.table_name == table.name
                )
            ).scalar()
            conn.execute(
                update(change).where(change.c.change_id == last).values(snapshot_last=True)
            )
        dialect.end_chunk(conn)
        conn.execute(
            update(snapshot_progress)
            .where(where)
            .values(
                next_from=None if end is None else json.dumps(list(end), default=str),
                rows_read=snapshot_progress.c.rows_read + inserted,
                done=end is None,
                updated_at=datetime.now(UTC),
            )
        )
        return inserted, end is None


def _chunk_end(
    conn: Connection, table: CapturedTable, start: tuple[Any, ...] | None, chunk_size: int
) -> tuple[Any, ...] | None:
    """The key of the first row after this chunk (None: the chunk runs to the end)."""
    quote = conn.dialect.identifier_preparer.quote
    keys = ", ".join(f"s.{quote(c)}" for c in table.primary_key)
    where, params = _range(conn, table, start, None)
    row = conn.execute(
        text(
            f"SELECT {keys} FROM {quote(table.name)} s WHERE {where} "
            f"ORDER BY {keys} LIMIT 1 OFFSET :offset"
        ),
        {**params, "offset": chunk_size},
    ).first()
    return None if row is None else tuple(row)


def _copy_rows(
    conn: Connection,
    dialect: CaptureDialect,
    table: CapturedTable,
    txid: int,
    start: tuple[Any, ...] | None,
    end: tuple[Any, ...] | None,
) -> int:
    quote = conn.dialect.identifier_preparer.quote
    keys = ", ".join(f"s.{quote(c)}" for c in table.primary_key)
    where, params = _range(conn, table, start, end)
    key_image = dialect.key_image(conn, table, "s")
    row_image = dialect.row_image(conn, table, "s")
    source = f"FROM {quote(table.name)} s WHERE {where} ORDER BY {keys}{dialect.snapshot_lock}"
    columns = f"txid, table_name, op, pk, {quote('after')}, captured_at"
    target = f"INSERT INTO {quote(CHANGE_TABLE)} ({columns})"
    params = {**params, "txid": txid, "table_name": table.name}
    if not dialect.snapshot_reads_in_python:
        result = conn.execute(
            text(
                f"{target} SELECT :txid, :table_name, 'r', {key_image}, {row_image}, "
                f"{dialect.now()} {source}"
            ),
            params,
        )
        return int(result.rowcount)
    rows = conn.execute(text(f"SELECT {key_image}, {row_image} {source}"), params).all()
    if rows:
        conn.execute(
            text(f"{target} VALUES (:txid, :table_name, 'r', :pk, :image, {dialect.now()})"),
            [
                {"txid": txid, "table_name": table.name, "pk": pk, "image": image}
                for pk, image in rows
            ],
        )
    return len(rows)


def _range(
    conn: Connection,
    table: CapturedTable,
    start: tuple[Any, ...] | None,
    end: tuple[Any, ...] | None,
) -> tuple[str, dict[str, Any]]:
    """SQL for ``start <= key < end`` (lexicographic on the primary key) and its params."""
    quote = conn.dialect.identifier_preparer.quote
    columns = [f"s.{quote(c)}" for c in table.primary_key]
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if start is not None:
        clauses.append(_compare(columns, "lo", ">", inclusive=True))
        params.update({f"lo{i}": v for i, v in enumerate(start)})
    if end is not None:
        clauses.append(_compare(columns, "hi", "<", inclusive=False))
        params.update({f"hi{i}": v for i, v in enumerate(end)})
    return (" AND ".join(clauses) or "1 = 1"), params


def _compare(columns: list[str], name: str, strict: str, inclusive: bool) -> str:
    """Lexicographic comparison of ``columns`` with the parameters ``name0, name1...``."""
    alternatives = []
    for i, column in enumerate(columns):
        equal = [f"{c} = :{name}{j}" for j, c in enumerate(columns[:i])]
        last = i == len(columns) - 1
        operator = strict + ("=" if inclusive and last else "")
        alternatives.append(" AND ".join([*equal, f"{column} {operator} :{name}{i}"]))
    return "(" + " OR ".join(f"({a})" for a in alternatives) + ")"
