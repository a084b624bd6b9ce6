"""The facade's Prometheus metrics.

In one process (tests, ``strangler demo``) each app has its own registry. Under gunicorn
``strangler serve`` runs prometheus_client's multiprocess mode: it points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary folder before the workers fork, each
worker writes its values to files there, and a scrape of any worker adds up all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def multiprocess_dir() -> str | None:
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


def use_multiprocess_values() -> bool:
    """Make metrics created from now on write to ``PROMETHEUS_MULTIPROC_DIR``, if it is set.

    prometheus_client picks its value class when it is first imported, which may be before
    ``strangler serve`` set the variable: pick it again (in the worker, before any metric
    of the facade exists).
    """
    if multiprocess_dir() is None:
        return False
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return True


def mark_process_dead(pid: int) -> None:
    """Called by gunicorn's master when a worker exits (drops its live gauges)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class FacadeMetrics:
    """Counters and histograms of one facade app.

    ``route`` labels are ``METHOD pattern`` of a route in the table, or ``other``: request
    paths never become labels.
    """

    def __init__(self, multiprocess_mode: bool | None = None) -> None:
        self.multiprocess = (
            getattr(values.ValueClass, "_multiprocess", False)
            if multiprocess_mode is None
            else multiprocess_mode
        )
        # Multiprocess metrics are not registered anywhere: a scrape reads the files.
        self.registry: CollectorRegistry | None = (
            None if self.multiprocess else (CollectorRegistry(auto_describe=True))
        )
        registry = self.registry
        self.requests = Counter(
            "strangler_facade_requests",
            "Requests answered by the facade, by route, route mode and who served them.",
            ["route", "mode", "served_by"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "strangler_facade_fallbacks",
            "Requests meant for the new system that legacy served instead, by reason "
            "(error, timeout, lag).",
            ["route", "reason"],
            registry=registry,
        )
        self.shadow_results = Counter(
            "strangler_facade_shadow_results",
            "Shadow (kind=shadow) and A/A (kind=aa) comparisons, by outcome "
            "(match, mismatch, error).",
            ["route", "kind", "outcome"],
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "strangler_facade_shadow_dropped",
            "Comparisons not made, by reason (queue_full, too_large, incomplete, lag, "
            "write_failed).",
            ["route", "reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "strangler_facade_upstream_seconds",
            "Time for each system to answer (legacy: until its response headers when "
            "serving, until the whole body when compared; new: its whole answer).",
            ["system", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "strangler_facade_lag_seconds",
            "End-to-end lag of the new system as the facade last read it.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.lag_guard = Gauge(
            "strangler_facade_lag_guard_tripped",
            "1 while the lag guard sends new and canary routes to legacy.",
            registry=registry,
            multiprocess_mode="livemax",
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
