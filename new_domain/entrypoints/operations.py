"""The new domain's side of the pipeline for an operator's console, as JSON-ready data.

The same readings and actions as ``strangler status``, ``strangler anomalies`` and
``strangler dlq list|replay`` (the same functions), for a long-running caller (the
facade's admin API): each call opens what it needs and closes it again. A part that
cannot be reached raises :class:`PipelineUnavailable` with one line saying which and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

import broker
from new_domain.adapters.anomalies import anomaly_counts, latest_anomalies
from new_domain.adapters.database import create_engine, safe_url
from new_domain.adapters.dead_letters import SqlAlchemyDeadLetters
from new_domain.adapters.lag import read_progress
from new_domain.adapters.outbox import backlog
from new_domain.adapters.schema import pending_revisions
from new_domain.bootstrap import bootstrap
from new_domain.entrypoints.consumer import DEFAULT_QUEUE
from new_domain.entrypoints.dead_letter_queue import dead_letter_fields, peek, replay
from new_domain.entrypoints.options import first_line
from new_domain.ingest import DatabaseUnavailable
from new_domain.ingest.ports import DEAD


class PipelineUnavailable(Exception):
    """The new database or the broker could not be read (one line, no credentials)."""


class PipelineReader:
    """The consumer's progress, queue, dead letters, outbox and anomalies; dead-letter
    replay. ``broker_url`` None (or the in-process broker): the queue parts are
    unavailable."""

    def __init__(
        self, new_db_url: str, broker_url: str | None = None, queue: str = DEFAULT_QUEUE
    ) -> None:
        self._new_db_url = new_db_url
        self._broker_url = broker_url
        self.queue = queue
        self._engine: Engine | None = None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- readings ------------------------------------------------------------------------

    def consumer(self, now: datetime | None = None) -> dict[str, Any]:
        """Per legacy source: legacy's state the read model reflects, the newest
        heartbeat and its age, when the consumer last applied, the lag; the outbox's
        backlog and the dead letters recorded in the new database."""
        moment = now or datetime.now(UTC)
        try:
            with self._connect() as connection:
                progress = read_progress(connection)
                waiting = backlog(connection)
                dead = SqlAlchemyDeadLetters(connection).count(DEAD)
        except SQLAlchemyError as error:
            raise PipelineUnavailable(self._database_problem(error)) from error
        sources = [
            {
                "source": p.source,
                "current_as_of": _iso(p.current_as_of),
                "newest_commit_at": _iso(p.newest_commit_at),
                "heartbeat_at": _iso(p.heartbeat_at),
                "heartbeat_age_seconds": None
                if p.heartbeat_at is None
                else _seconds(moment - p.heartbeat_at),
                "applied_at": _iso(p.applied_at),
                "lag_seconds": None if (lag := p.lag_seconds(moment)) is None else round(lag, 3),
            }
            for p in progress
        ]
        known = [s["lag_seconds"] for s in sources if s["lag_seconds"] is not None]
        return {
            "sources": sources,
            "lag_seconds": max(known) if known else None,
            "outbox_backlog": waiting,
            "dead_in_database": dead,
        }

    def queue_depths(self) -> dict[str, Any]:
        """The consumer's queue and its dead-letter queue: messages waiting in each."""
        with self._broker() as connection:
            try:
                depth = connection.queue_depth(self.queue)
                dead = connection.queue_depth(f"{self.queue}.dlq")
            except broker.BrokerError as error:
                raise PipelineUnavailable(f"cannot read queue {self.queue}: {error}") from error
        return {
            "name": self.queue,
            "depth": depth,
            "dead_letter_queue": f"{self.queue}.dlq",
            "dead_letters": dead,
        }

    def anomalies(self, limit: int, kind: str | None = None) -> dict[str, Any]:
        """``counts`` per kind and the newest ``limit`` anomalies (of ``kind``)."""
        try:
            with self._connect() as connection:
                counts = anomaly_counts(connection)
                rows = latest_anomalies(connection, limit, kind)
        except SQLAlchemyError as error:
            raise PipelineUnavailable(self._database_problem(error)) from error
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "anomalies": [
                {
                    "recorded_at": _iso(row.recorded_at),
                    "kind": row.kind,
                    "sku": row.sku,
                    "detail": row.detail,
                    "message_id": row.message_id,
                }
                for row in rows
            ],
        }

    def dead_letters(self, limit: int) -> dict[str, Any]:
        """Up to ``limit`` dead letters with why they failed (they stay in the queue)."""
        dead_letter_queue = f"{self.queue}.dlq"
        with self._broker() as connection:
            try:
                depth = connection.queue_depth(dead_letter_queue)
                deliveries = peek(connection, dead_letter_queue, limit) if depth else []
            except broker.BrokerError as error:
                raise PipelineUnavailable(f"cannot read {dead_letter_queue}: {error}") from error
        return {
            "queue": dead_letter_queue,
            "depth": depth,
            "dead_letters": [dead_letter_fields(d.message) for d in deliveries],
        }

    # -- action --------------------------------------------------------------------------

    def replay(self, ids: Sequence[str], limit: int = 10_000) -> dict[str, Any]:
        """Replay the dead letters with these message ids (as ``strangler dlq replay
        --id``): applied in stream order, each exactly once; one that fails again goes
        back with its new reason."""
        self._require_schema()
        bus = bootstrap(self._new_db_url)
        try:
            with self._broker() as connection:
                try:
                    report = replay(bus, connection, self.queue, ids, limit)
                except (broker.BrokerError, DatabaseUnavailable) as error:
                    raise PipelineUnavailable(first_line(error)) from error
        finally:
            bus.uow.close()
        return {
            "applied": report.applied,
            "already_applied": report.already_applied,
            "failed": [{"message_id": m, "reason": r} for m, r in report.failed],
            "not_found": report.not_found,
        }

    # -- plumbing ------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._engine is None:
            self._engine = create_engine(self._new_db_url)
        return self._engine.connect()

    def _database_problem(self, error: BaseException) -> str:
        return f"cannot read the new database {safe_url(self._new_db_url)}: {first_line(error)}"

    def _require_schema(self) -> None:
        try:
            current, heads = pending_revisions(self._new_db_url)
        except SQLAlchemyError as error:
            raise PipelineUnavailable(self._database_problem(error)) from error
        if not heads <= current:
            raise PipelineUnavailable(
                f"the new database {safe_url(self._new_db_url)} is not migrated: "
                "run `strangler db upgrade`"
            )

    def _broker(self) -> _BrokerConnection:
        if self._broker_url is None or broker.is_in_process(self._broker_url):
            raise PipelineUnavailable(
                "no broker to read: the facade was started without an amqp:// BROKER_URL"
            )
        return _BrokerConnection(self._broker_url)


class _BrokerConnection:
    """``with``: one broker connection, closed at the end (what was taken goes back)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: broker.Broker | None = None

    def __enter__(self) -> broker.Broker:
        try:
            self._connection = broker.connect(self._url)
        except broker.BrokerError as error:
            raise PipelineUnavailable(f"cannot reach the broker: {error}") from error
        return self._connection

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None:
            self._connection.close()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _seconds(delta: Any) -> float:
    return round(max(0.0, float(delta.total_seconds())), 3)
