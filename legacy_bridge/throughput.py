"""Rate-limited progress logging: one INFO line every few seconds, not one per batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThroughputLog:
    """Counts published changes and logs the rate at most every ``interval`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._since = clock()
        self._count = 0
        self.total = 0

    def record(self, published: int, last_pos: int) -> None:
        """Add a confirmed batch; log if the interval has passed."""
        now = self._clock()
        if self._count == 0 and now - self._since >= self._interval:
            self._since = now  # idle until now: the rate is measured from this batch on
        self._count += published
        self.total += published
        elapsed = now - self._since
        if elapsed >= self._interval and self._count:
            self._logger.info(
                "published %d changes in %.1f s (%.0f/s), confirmed up to position %d",
                self._count,
                elapsed,
                self._count / elapsed,
                last_pos,
            )
            self._since = now
            self._count = 0
