"""What one facade app is made of, kept in ``app.extensions`` for its endpoints and tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flask import Flask

from skeleton_app.lag_guard import LagGuard
from skeleton_app.lag_history import LagHistory
from skeleton_app.metrics import DecisionParityMetrics, FacadeMetrics
from skeleton_app.new_system import NewSystem
from skeleton_app.new_writes import WriteHandler
from skeleton_app.operations import Operations
from skeleton_app.patterns import RouteKey
from skeleton_app.proxy import LegacyProxy
from skeleton_app.routes_table import RouteTable
from skeleton_app.settings import FacadeSettings
from skeleton_app.shadow import ShadowWorker
from skeleton_app.shadow_results import ShadowResults
from skeleton_app.write_path import WritePathPort

EXTENSION = "strangler"


@dataclass(frozen=True)
class Facade:
    settings: FacadeSettings
    table: RouteTable
    proxy: LegacyProxy
    new_system: NewSystem
    results: ShadowResults
    shadow: ShadowWorker
    guard: LagGuard
    metrics: FacadeMetrics
    write_path: WritePathPort | None = None
    """The new system's write path (None: write groups cannot move past shadow)."""
    write_handlers: Mapping[RouteKey, WriteHandler] = field(default_factory=dict)
    decisions: DecisionParityMetrics | None = None
    lag_history: LagHistory | None = None
    """Samples of the end-to-end lag (the console's chart)."""
    operations: Operations | None = None
    """The rest of the pipeline (bridge, queue, dead letters, anomalies); None: unknown."""


def facade_of(app: Flask) -> Facade:
    """The parts of a facade built by ``create_app``."""
    facade: Facade = app.extensions[EXTENSION]
    return facade
