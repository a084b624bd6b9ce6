"""Prometheus metrics of the relay (served by ``strangler bridge run --metrics-port``).

Counters move only after the broker confirmed what they count and the checkpoint moved.
"""

from __future__ import annotations

from prometheus_client import Counter

CHANGES_PUBLISHED = Counter(
    "strangler_bridge_changes_published",
    "Captured changes (snapshot rows included) published and confirmed by the broker.",
)
HEARTBEATS_PUBLISHED = Counter(
    "strangler_bridge_heartbeats_published",
    "Heartbeats published while legacy was quiet.",
)
