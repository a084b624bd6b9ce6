"""Prometheus metrics of back-sync (served by ``strangler backsync run --metrics-port``).

Counters move only after the legacy transaction that did the work committed.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISIONS_WRITTEN = Counter(
    "strangler_backsync_decisions_written",
    "Decisions of the new system written into the legacy database, by write route.",
    ["route"],
)
DECISIONS_SKIPPED = Counter(
    "strangler_backsync_decisions_skipped",
    "Decisions and fences received again after they were written (nothing written twice).",
)
FENCES_WRITTEN = Counter(
    "strangler_backsync_fences_written",
    "Ownership fences written into the legacy database (takeover or handback).",
    ["kind"],
)
DEAD_LETTERS = Counter(
    "strangler_backsync_dead_letters",
    "Messages back-sync could never write, sent to its dead-letter queue, by error type.",
    ["error_type"],
)
LAG_SECONDS = Histogram(
    "strangler_backsync_lag_seconds",
    "From the new system's decision (its events' occurred_at) to the legacy commit.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
