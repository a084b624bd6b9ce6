"""The facade's knobs, with the defaults ``strangler serve`` uses."""

from __future__ import annotations

from dataclasses import dataclass, field

from skeleton_app.gate import CutoverGate

MiB = 1024 * 1024


@dataclass(frozen=True)
class FacadeSettings:
    """How the facade behaves.

    ``upstream_timeout``: seconds legacy may take. ``new_timeout``: seconds the new system
    may take before legacy answers instead. ``max_lag``: seconds of end-to-end lag above
    which ``new`` and ``canary`` routes serve from legacy (None: no lag guard); while legacy
    is idle the lag is only refreshed by the bridge's heartbeats (every 5 s by default), so
    the bound must stay well above the heartbeat interval or the guard would flap.
    ``shadow_*``: the shadow queue's size, the default share of requests compared, the
    biggest body (request or answer) kept for a comparison, and how results are written.
    ``admin_token``: the shared bearer token of the admin API; ``admin_tokens``: named
    tokens, ``(name, token)`` pairs, one per operator, whose name the audit records (with
    neither, the admin API is off).
    ``gate``: the cutover gate and the window parity is measured over.
    ``decision_parity_interval``: seconds the write routes' decision parity shown in the
    metrics is kept before it is read again.
    ``data_plane_metrics``: the Unix socket of the data plane's (HAProxy's) Prometheus
    exporter, whose metrics ``/metrics`` appends (None: no data plane).
    ``lag_sample_interval``: seconds between the samples of the end-to-end lag kept for
    the console's chart (0: none).
    """

    upstream_timeout: float = 10.0
    new_timeout: float = 2.0
    max_lag: float | None = 15.0
    lag_check_interval: float = 1.0
    shadow_queue_size: int = 1000
    shadow_sample_rate: float = 1.0
    shadow_max_body: int = MiB
    shadow_batch_size: int = 100
    shadow_flush_interval: float = 0.5
    shadow_prune_interval: float = 60.0
    admin_token: str | None = field(default=None, repr=False)
    admin_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    gate: CutoverGate = field(default_factory=CutoverGate)
    metrics_path: str = "/metrics"
    new_workers: int = 8
    decision_parity_interval: float = 5.0
    data_plane_metrics: str | None = None
    lag_sample_interval: float = 10.0
