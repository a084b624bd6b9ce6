"""The end-to-end lag over time: what the console's chart draws.

The facade already asks the read model for the end-to-end lag (the lag guard); a
sampler thread writes that figure into ``facade_lag_sample`` in the new database once per
``interval`` seconds and prunes rows older than ``keep`` seconds. The facade samples,
rather than the consumer, because a stopped consumer or bridge is exactly when the lag
climbs: the consumer would record nothing then, the facade still measures it. Each row's
key is the start of its interval, so the facade's workers (one sampler each) store one
row per interval between them.

The sampler starts with the first request to the facade's own endpoints (``/metrics``
scraped by Prometheus, a health check, the console: nothing connects at ``create_app``,
and client traffic alone never opens the read model) and stops at ``close``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from skeleton_app.errors import printable
from skeleton_app.read_model import LagProvider
from skeleton_app.schema import facade_lag_sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LagSample:
    at: datetime
    lag_seconds: float | None

    def to_dict(self) -> dict[str, object]:
        return {"at": self.at.isoformat(), "lag_seconds": self.lag_seconds}


class LagHistory:
    """Samples of the end-to-end lag, one per ``interval`` seconds, kept ``keep`` seconds."""

    def __init__(
        self,
        engine: Engine,
        provider: LagProvider | None,
        interval: float = 10.0,
        keep: float = 2 * 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._provider = provider
        self.interval = interval
        self.keep = keep
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._provider is not None and self.interval > 0

    def start(self) -> None:
        """Start the sampler thread (once; nothing when there is no lag to sample)."""
        if self._thread is not None or not self.enabled or self._stop.is_set():
            return
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="lag-history", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def record(self) -> LagSample | None:
        """Measure the lag now and store it as this interval's sample (a sample another
        worker stored for the interval first is kept); prune old ones. None when nothing
        could be stored."""
        if self._provider is None:
            return None
        now = self._clock()
        try:
            lag = self._provider()
        except Exception as exc:  # noqa: BLE001 - an unmeasurable lag is stored as unknown
            log.debug("lag not measured: %s", printable(str(exc).split("\n")[0]))
            lag = None
        sample = LagSample(self._slot(now), None if lag is None else round(float(lag), 3))
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    delete(facade_lag_sample).where(
                        facade_lag_sample.c.at < now - timedelta(seconds=self.keep)
                    )
                )
            with self._engine.begin() as conn:
                conn.execute(
                    insert(facade_lag_sample).values(at=sample.at, lag_seconds=sample.lag_seconds)
                )
        except IntegrityError:
            return None  # another worker sampled this interval
        except SQLAlchemyError as exc:
            log.warning("lag sample not stored: %s", printable(str(exc).split("\n")[0]))
            return None
        return sample

    def samples(self, seconds: float = 3600.0) -> list[LagSample]:
        """The samples of the last ``seconds``, oldest first."""
        since = self._clock() - timedelta(seconds=seconds)
        t = facade_lag_sample
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(t.c.at, t.c.lag_seconds).where(t.c.at >= since).order_by(t.c.at)
            ).all()
        return [LagSample(_aware(at), lag) for at, lag in rows]

    def _slot(self, now: datetime) -> datetime:
        """The start of the interval ``now`` falls in."""
        step = max(self.interval, 0.001)
        start = (now.timestamp() // step) * step
        return datetime.fromtimestamp(start, UTC)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.record()
            except Exception:  # noqa: BLE001 - the sampler must outlive one failure
                log.exception("lag sampling failed")
            self._stop.wait(self.interval)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
