"""The strangler facade: routes move one at a time from the legacy system to the new one.

Public API::

    create_app(legacy_url, new_db_url, ...) -> Flask   # the facade (WSGI app)
    close_app(app)                                     # stop its shadow thread, pools
    facade_of(app) -> Facade                           # its parts (route table, shadow ...)
    FacadeSettings                                     # timeouts, guards, shadow, admin token
    RouteTable(new_db_url, gate=CutoverGate())         # list / set / history / match routes
    Mode, RouteMode, RouteOptions                      # how a route is served and compared
    ShadowResults, Parity, Window                      # comparison results and parity
    NEW_HANDLERS, NewRequest                           # routes the new system can serve
    metadata                                           # its tables (the migrations' target)
"""

from skeleton_app.app import close_app, create_app
from skeleton_app.facade import Facade, facade_of
from skeleton_app.gate import CutoverGate
from skeleton_app.modes import Mode, RouteMode
from skeleton_app.new_routes import NEW_HANDLERS, NewRequest
from skeleton_app.patterns import RouteError
from skeleton_app.route_options import RouteOptions
from skeleton_app.routes_table import (
    AuditEntry,
    CutoverRefused,
    Route,
    RouteMatch,
    RouteTable,
)
from skeleton_app.schema import metadata
from skeleton_app.settings import FacadeSettings
from skeleton_app.shadow_results import Parity, ShadowResults, Window

__all__ = [
    "NEW_HANDLERS",
    "AuditEntry",
    "CutoverGate",
    "CutoverRefused",
    "Facade",
    "FacadeSettings",
    "Mode",
    "NewRequest",
    "Parity",
    "Route",
    "RouteError",
    "RouteMatch",
    "RouteMode",
    "RouteOptions",
    "RouteTable",
    "ShadowResults",
    "Window",
    "close_app",
    "create_app",
    "facade_of",
    "metadata",
]
