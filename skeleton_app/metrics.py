"""The facade's Prometheus metrics.

In one process (tests, ``strangler demo``) each app has its own registry. Under gunicorn
``strangler serve`` runs prometheus_client's multiprocess mode: it points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary folder before the workers fork, each
worker writes its values to files there, and a scrape of any worker adds up all of them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

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

log = logging.getLogger(__name__)

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
            "compare_failed, write_failed).",
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
        self.write_answers = Counter(
            "strangler_facade_write_answers",
            "Answers to the routes of write groups, by who decided (owner: new, legacy, "
            "changing = 503 while the product changes hands, refused = the body refused "
            "as legacy refuses it, unknown = ownership not read yet) and status.",
            ["route", "owner", "status"],
            registry=registry,
        )
        self.decision_parity = Gauge(
            "strangler_facade_decision_parity_percent",
            "Decision parity per write route: the share of legacy's decisions the new rules "
            "took the same way (%), as the facade last read it.",
            ["route"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.decision_samples = Gauge(
            "strangler_facade_decision_parity_samples",
            "Legacy decisions judged per write route, by verdict (agree, differ), as the "
            "facade last read them.",
            ["route", "verdict"],
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


class DecisionParityMetrics:
    """Keeps the decision parity gauges fresh: ``source()`` (the write routes' decision
    parity, ``{route: {"agree", "differ", "samples", "percent"}}``) is read at most once
    per ``interval`` seconds, when the metrics are scraped; one scrape reads, the others
    meanwhile show the last values."""

    def __init__(
        self,
        metrics: FacadeMetrics,
        source: Callable[[], Mapping[str, Mapping[str, Any]]],
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._source = source
        self._interval = interval
        self._clock = clock
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        now = self._clock()
        if self._read_at is not None and now - self._read_at < self._interval:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._read_at = now
            for route, counts in self._source().items():
                self._metrics.decision_samples.labels(route, "agree").set(counts["agree"])
                self._metrics.decision_samples.labels(route, "differ").set(counts["differ"])
                if route != "unclassified" and counts["samples"]:
                    self._metrics.decision_parity.labels(route).set(counts["percent"])
        finally:
            self._lock.release()


DATA_PLANE_UP = "strangler_data_plane_metrics_up"


def scrape_unix_socket(path: str, timeout: float = 2.0, limit: int = 16 * 1024 * 1024) -> bytes:
    """The body of ``GET /metrics`` from an HTTP server on the Unix socket ``path`` (the
    data plane's Prometheus exporter); raises OSError or ValueError when it fails."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: data-plane\r\n\r\n")
        chunks, size = [], 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"the data plane's metrics are larger than {limit} bytes")
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"the data plane's metrics answered {head[:80]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunked(body)
    return body


def _unchunked(body: bytes) -> bytes:
    out: list[bytes] = []
    position = 0
    while True:
        end = body.index(b"\r\n", position)
        size = int(body[position:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        position = end + 2 + size + 2


def with_data_plane(payload: bytes, socket_path: str | None) -> bytes:
    """The facade's exposition ``payload`` followed by the data plane's own (HAProxy's
    ``haproxy_*`` families) and ``strangler_data_plane_metrics_up`` (1: they are there;
    0: the data plane did not answer). Without ``socket_path`` (no data plane), as is."""
    if socket_path is None:
        return payload
    try:
        extra = scrape_unix_socket(socket_path)
        up = 1
    except (OSError, ValueError) as exc:
        log.warning("data plane metrics unavailable: %s", exc)
        extra, up = b"", 0
    gauge = (
        f"# HELP {DATA_PLANE_UP} Whether the data plane's (HAProxy's) metrics follow.\n"
        f"# TYPE {DATA_PLANE_UP} gauge\n{DATA_PLANE_UP} {up}\n"
    ).encode()
    if payload and not payload.endswith(b"\n"):
        payload += b"\n"
    if extra and not extra.endswith(b"\n"):
        extra += b"\n"
    return payload + gauge + extra
