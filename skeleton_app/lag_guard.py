"""The lag guard: while the read model is too far behind legacy, new answers would be stale.

Routes in ``new`` or ``canary`` then serve from legacy, and shadow comparisons pause (a
lagging read model would only produce noise), until the lag is back under the bound. The
lag is asked at most once per ``check_interval`` seconds; a provider that fails counts as
too far behind (the safe side), one that answers None (nothing measured yet) does not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from skeleton_app.read_model import LagProvider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LagStatus:
    lag: float | None
    tripped: bool
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"lag_seconds": self.lag, "tripped": self.tripped, "error": self.error}


class LagGuard:
    """Decides whether the new system is too far behind; ``max_lag`` None disables it."""

    def __init__(
        self,
        provider: LagProvider | None,
        max_lag: float | None = 15.0,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_status: Callable[[LagStatus], None] | None = None,
    ) -> None:
        self._provider = provider
        self.max_lag = max_lag
        self._check_interval = check_interval
        self._clock = clock
        self._on_status = on_status
        self._status = LagStatus(None, False)
        self._checked_at: float | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._provider is not None and self.max_lag is not None

    def status(self) -> LagStatus:
        """The current verdict (cached for ``check_interval`` seconds)."""
        if not self.enabled:
            return self._status
        now = self._clock()
        checked = self._checked_at
        if checked is not None and now - checked < self._check_interval:
            return self._status
        # One thread asks; the others use the verdict they have.
        if not self._lock.acquire(blocking=checked is None):
            return self._status
        try:
            if self._checked_at != checked:
                return self._status
            self._status = self._ask()
            self._checked_at = now
            if self._on_status is not None:
                self._on_status(self._status)
            return self._status
        finally:
            self._lock.release()

    def tripped(self) -> bool:
        return self.status().tripped

    def _ask(self) -> LagStatus:
        assert self._provider is not None and self.max_lag is not None
        try:
            lag = self._provider()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if not self._status.tripped:
                log.warning("cannot read the new system's lag (%s): serving from legacy", error)
            return LagStatus(None, True, error)
        if lag is None:
            return LagStatus(None, False)
        tripped = lag > self.max_lag
        if tripped != self._status.tripped:
            if tripped:
                log.warning(
                    "new system lags %.1f s (> %g s): new and canary routes serve from legacy",
                    lag,
                    self.max_lag,
                )
            else:
                log.info("new system lag back to %.1f s: guard released", lag)
        return LagStatus(float(lag), tripped)
