"""The pipeline as the console and the admin API see it (a port).

The facade itself knows the route table and the read model; the pipeline's other parts
(the bridge's position in the legacy database, the consumer's queue and dead letters in
RabbitMQ, the new domain's anomalies) are read by an implementation the composition root
builds (``skeleton_app.composition.console``), with the same functions the ``strangler
status``, ``bridge status``, ``dlq`` and ``anomalies`` commands use. Every method
returns plain JSON-ready data, or raises :class:`OperationsUnavailable` saying what
could not be reached (the admin API answers 503 with it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class OperationsUnavailable(Exception):
    """A part of the pipeline could not be read or acted on (one line, no credentials)."""


class Operations(Protocol):
    def pipeline(self) -> dict[str, Any]:
        """``bridge`` (position, pending changes, throughput, snapshots; None without the
        legacy database), ``consumer`` (per source: legacy as of, heartbeat age, lag),
        ``queue`` (depth, dead letters), ``outbox`` backlog, ``anomalies`` counts, and
        ``errors``: what could not be read, per part."""
        ...

    def dead_letters(self, limit: int) -> dict[str, Any]:
        """The dead-letter queue: ``queue``, ``depth``, ``dead_letters`` (message id,
        routing key, position, attempts, first failure, error type and reason)."""
        ...

    def replay(self, ids: Sequence[str]) -> dict[str, Any]:
        """Replay these dead letters (by message id): ``applied``, ``already_applied``,
        ``failed`` (message id and reason), ``not_found``."""
        ...

    def anomalies(self, limit: int, kind: str | None) -> dict[str, Any]:
        """``counts`` per kind and the newest ``anomalies``."""
        ...

    def close(self) -> None: ...


OperationsOpener = Callable[[str, str | None, str, str | None], Operations]
"""``open_operations(new_db_url, broker_url, queue, legacy_db_url) -> Operations``."""
