"""What one facade app is made of, kept in ``app.extensions`` for its endpoints and tests."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from skeleton_app.lag_guard import LagGuard
from skeleton_app.metrics import FacadeMetrics
from skeleton_app.new_system import NewSystem
from skeleton_app.proxy import LegacyProxy
from skeleton_app.routes_table import RouteTable
from skeleton_app.settings import FacadeSettings
from skeleton_app.shadow import ShadowWorker
from skeleton_app.shadow_results import ShadowResults

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


def facade_of(app: Flask) -> Facade:
    """The parts of a facade built by ``create_app``."""
    facade: Facade = app.extensions[EXTENSION]
    return facade
