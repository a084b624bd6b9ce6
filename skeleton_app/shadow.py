"""Shadow work, off the request path: ask the candidate, compare, record in batches.

A request thread only ever puts a job on a bounded queue, without waiting: when the queue
is full the job is dropped and counted, so shadowing can never slow or break the legacy
path. One worker thread per facade process takes the jobs, asks the candidate (the new
system, or legacy again for A/A) with a time limit, compares the answers, counts the
outcome in the metrics and writes the results to the new database in batches (at most
``batch_size`` rows, at least every ``flush_interval`` seconds), pruning it to the window
now and then.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from skeleton_app.compare import Answer, compare
from skeleton_app.metrics import FacadeMetrics
from skeleton_app.new_routes import NewRequest
from skeleton_app.route_options import RouteOptions
from skeleton_app.shadow_results import ERROR, SHADOW, ShadowResult, ShadowResults

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class ShadowJob:
    """One request to compare: what legacy answered and how to ask the candidate."""

    kind: str
    method: str
    pattern: str
    request: NewRequest
    legacy: Answer
    options: RouteOptions
    record_path: str = field(default="")

    @property
    def route(self) -> str:
        return f"{self.method} {self.pattern}"


Candidate = Callable[[ShadowJob], Answer]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ShadowWorker:
    """The bounded queue and the thread that empties it (started on the first job)."""

    def __init__(
        self,
        candidates: dict[str, Candidate],
        metrics: FacadeMetrics,
        store: ShadowResults | None = None,
        *,
        queue_size: int = 1000,
        batch_size: int = 100,
        flush_interval: float = 0.5,
        prune_interval: float = 60.0,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._candidates = candidates
        self._metrics = metrics
        self._store = store
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._prune_interval = prune_interval
        self._now = now
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._drain_requested = threading.Event()
        self._done = threading.Condition()
        self._outstanding = 0
        self._counts = {
            "offered": 0,
            "dropped": 0,
            "compared": 0,
            "written": 0,
            "write_failures": 0,
        }

    # -- the request path --------------------------------------------------------------

    def offer(self, job: ShadowJob) -> bool:
        """Queue a job without waiting; False (and counted) when the queue is full."""
        if self._stop.is_set():
            return False
        self._ensure_started()
        with self._done:
            self._outstanding += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._done:
                self._outstanding -= 1
                self._done.notify_all()
            self.dropped(job.route, "queue_full")
            return False
        self._count("offered")
        return True

    def full(self) -> bool:
        return self._queue.full()

    def dropped(self, route: str, reason: str, count: int = 1) -> None:
        self._metrics.shadow_dropped.labels(route, reason).inc(count)
        self._count("dropped", count)

    # -- control -----------------------------------------------------------------------

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued job is compared and written; False on timeout."""
        deadline = time.monotonic() + timeout
        self._drain_requested.set()
        with self._done:
            while self._outstanding > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued (within ``timeout``), write it, stop the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)  # wake the worker up
            thread.join(timeout)

    def stats(self) -> dict[str, int]:
        with self._done:
            return {**self._counts, "queued": self._queue.qsize(), "capacity": self._queue.maxsize}

    # -- the worker thread ---------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="shadow-worker", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        pending: list[ShadowResult] = []
        first_pending_at = 0.0
        last_prune = time.monotonic()
        while True:
            try:
                job: ShadowJob | None = self._queue.get(timeout=0.05 if pending else 0.25)
            except queue.Empty:
                job = None
            if job is not None:
                result = self._judged(job)
                if result is not None:
                    if not pending:
                        first_pending_at = time.monotonic()
                    pending.append(result)
            idle = self._queue.empty()
            due = pending and (
                len(pending) >= self._batch_size
                or (idle and self._drain_requested.is_set())
                or (idle and self._stop.is_set())
                or time.monotonic() - first_pending_at >= self._flush_interval
            )
            if due:
                self._flush(pending)
                pending = []
            if idle and not pending:
                self._drain_requested.clear()
                if self._stop.is_set():
                    return
            if time.monotonic() - last_prune >= self._prune_interval:
                self._prune()
                last_prune = time.monotonic()

    def _judged(self, job: ShadowJob) -> ShadowResult | None:
        """``job`` compared; None (logged, counted as dropped) when comparing it failed
        outside the candidate (a bug): the worker thread must outlive any one job."""
        try:
            return self._compare(job)
        except Exception:
            log.exception("cannot compare a shadow job of %s", job.route)
            with self._done:
                self._outstanding -= 1
                self._done.notify_all()
            self.dropped(job.route, "compare_failed")
            return None

    def _compare(self, job: ShadowJob) -> ShadowResult:
        route = job.route
        diff: str | None
        new_status: int | None = None
        new_ms: float | None = None
        try:
            candidate = self._candidates[job.kind](job)
        except Exception as exc:
            outcome, diff = ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
        else:
            comparison = compare(job.legacy, candidate, job.options)
            outcome, diff = comparison.outcome, comparison.diff
            new_status, new_ms = candidate.status, candidate.elapsed * 1000
            system = "new" if job.kind == SHADOW else "legacy"
            self._metrics.latency.labels(system, route).observe(candidate.elapsed)
        self._metrics.latency.labels("legacy", route).observe(job.legacy.elapsed)
        self._metrics.shadow_results.labels(route, job.kind, outcome).inc()
        self._count("compared")
        return ShadowResult(
            at=self._now(),
            method=job.method,
            pattern=job.pattern,
            kind=job.kind,
            outcome=outcome,
            path=job.record_path or job.request.path,
            legacy_status=job.legacy.status,
            legacy_ms=job.legacy.elapsed * 1000,
            new_status=new_status,
            new_ms=new_ms,
            diff=diff,
        )

    def _flush(self, results: list[ShadowResult]) -> None:
        try:
            if self._store is not None:
                self._store.write(results)
                self._count("written", len(results))
        except Exception as exc:
            log.warning(
                "cannot record %d shadow result(s): %s",
                len(results),
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            self._count("write_failures")
            for result in results:
                self.dropped(f"{result.method} {result.pattern}", "write_failed")
        finally:
            with self._done:
                self._outstanding -= len(results)
                self._done.notify_all()

    def _prune(self) -> None:
        if self._store is None:
            return
        try:
            self._store.prune(self._now())
        except Exception as exc:
            log.warning("cannot prune shadow results: %s", str(exc).splitlines()[0])

    def _count(self, name: str, amount: int = 1) -> None:
        with self._done:
            self._counts[name] += amount
