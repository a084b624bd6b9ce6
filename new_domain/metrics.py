"""Prometheus metrics of the new domain (served by ``strangler consume --metrics-port``).

Counters only move after the transaction that did the work committed.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CHANGES_APPLIED = Counter(
    "strangler_consumer_changes_applied",
    "Legacy changes applied to the new domain.",
)
CHANGES_SKIPPED = Counter(
    "strangler_consumer_changes_skipped",
    "Legacy changes skipped because they were applied before (redeliveries).",
)
DEAD_LETTERS = Counter(
    "strangler_consumer_dead_letters",
    "Messages given up on and sent to the dead-letter queue.",
)
FAILED_ATTEMPTS = Counter(
    "strangler_consumer_failed_attempts",
    "Failed attempts to apply a message (each counts towards --max-attempts).",
)
ANOMALIES = Counter(
    "strangler_legacy_anomalies",
    "Legacy facts that broke a new-domain invariant, recorded as anomalies.",
    ["kind"],
)
BATCH_SECONDS = Histogram(
    "strangler_consumer_batch_seconds",
    "Time to apply and acknowledge one batch of deliveries.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENTS_PUBLISHED = Counter(
    "strangler_outbox_events_published",
    "Domain events published from the outbox (confirmed by the broker).",
)
OUT_OF_SEQUENCE = Counter(
    "strangler_consumer_out_of_sequence",
    "Changes dead-lettered because their position does not follow the stream's last one"
    " (a gap or a jump: a forged or lost message); the stored position stays.",
)
DECISIONS = Counter(
    "strangler_decision_parity",
    "Legacy write decisions judged against the new rules, by write route and verdict"
    " (agree, differ; route unclassified: transactions that are no one decision).",
    ["route", "verdict"],
)
OWNERSHIP_VIOLATIONS = Counter(
    "strangler_ownership_violations",
    "Legacy changes (not echoes) to products the new system owns, recorded and not"
    " applied, by write group.",
    ["group"],
)
ECHO_ANOMALIES = Counter(
    "strangler_echo_anomalies",
    "Echoes of the new system's decisions whose legacy rows show another decision.",
)
ROUTED = Counter(
    "strangler_router_changes_routed",
    "Changes and heartbeats the shard router published to the shards (confirmed).",
)
