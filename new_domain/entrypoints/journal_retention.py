"""The decision journal's retention: ``strangler consume --journal-retention-days N``
deletes journaled decisions older than N days, once at start and then every hour, from
a thread beside the consumers (what ``strangler decisions prune`` does by hand)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from new_domain.adapters.decisions import prune_journal

logger = logging.getLogger(__name__)

EVERY_S = 3600.0


class JournalRetention:
    """Prunes the journal of entries older than ``days``; failures are logged and the
    next round tries again (several consumers pruning at once only wait on each other)."""

    def __init__(
        self,
        engine: Engine,
        days: int,
        every: float = EVERY_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if days < 1:
            raise ValueError("the journal's retention is at least one day")
        self.engine, self.days, self.every, self.clock = engine, days, every, clock
        self.pruned = 0

    def run_once(self) -> int:
        """Delete what is older than the retention now; how many entries went."""
        deleted = prune_journal(self.engine, self.clock() - timedelta(days=self.days))
        self.pruned += deleted
        if deleted:
            logger.info(
                "decision journal: pruned %d entries older than %d days", deleted, self.days
            )
        return deleted

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError as error:
                logger.warning("decision journal: pruning failed, next try in %.0fs (%s)",
                               self.every, str(error).splitlines()[0])  # fmt: skip
            stop.wait(self.every)
