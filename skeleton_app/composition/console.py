"""The console's view of the whole pipeline, wired where every package is known.

The facade's admin API reads the pipeline through :class:`skeleton_app.operations.Operations`;
this implementation joins the new domain's side (:class:`new_domain.PipelineReader`: the
consumer's progress, queue, dead letters, outbox, anomalies, replay) with the bridge's
(:func:`legacy_bridge.bridge_status` on the legacy database, when its URL is given), the
same functions ``strangler status``, ``bridge status``, ``dlq`` and ``anomalies`` use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from legacy_bridge import BridgeError, bridge_status
from new_domain import PipelineReader, PipelineUnavailable
from skeleton_app.errors import printable
from skeleton_app.operations import Operations, OperationsUnavailable

T = TypeVar("T")


class ConsoleOperations:
    """:class:`Operations` over the new database, the broker and (optionally) the legacy
    database; opens connections per call."""

    def __init__(
        self,
        new_db_url: str,
        broker_url: str | None,
        queue: str,
        legacy_db_url: str | None,
    ) -> None:
        self._reader = PipelineReader(new_db_url, broker_url, queue)
        self._legacy_db_url = legacy_db_url

    def pipeline(self) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        errors: dict[str, str] = {}
        parts: dict[str, Callable[[], Any]] = {
            "bridge": self._bridge,
            "consumer": self._reader.consumer,
            "queue": self._reader.queue_depths,
            "anomalies": lambda: self._reader.anomalies(1)["counts"],
        }
        for name, read in parts.items():
            try:
                shown[name] = read()
            except (OperationsUnavailable, PipelineUnavailable) as error:
                shown[name], errors[name] = None, str(error)
        shown["errors"] = errors
        return shown

    def dead_letters(self, limit: int) -> dict[str, Any]:
        return _translated(lambda: self._reader.dead_letters(limit))

    def replay(self, ids: Sequence[str]) -> dict[str, Any]:
        return _translated(lambda: self._reader.replay(ids))

    def anomalies(self, limit: int, kind: str | None) -> dict[str, Any]:
        return _translated(lambda: self._reader.anomalies(limit, kind))

    def close(self) -> None:
        self._reader.close()

    def _bridge(self) -> dict[str, Any]:
        if self._legacy_db_url is None:
            raise OperationsUnavailable(
                "the facade was started without the legacy database (LEGACY_DB_URL)"
            )
        try:
            return bridge_status(self._legacy_db_url).as_dict()
        except (BridgeError, SQLAlchemyError) as error:
            line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise OperationsUnavailable(f"cannot read the bridge: {printable(line)}") from error


def _translated(read: Callable[[], T]) -> T:
    try:
        return read()
    except PipelineUnavailable as error:
        raise OperationsUnavailable(str(error)) from error


def open_operations(
    new_db_url: str, broker_url: str | None, queue: str, legacy_db_url: str | None
) -> Operations:
    """The console's operations for ``strangler serve`` (one per facade worker)."""
    return ConsoleOperations(new_db_url, broker_url, queue, legacy_db_url)
