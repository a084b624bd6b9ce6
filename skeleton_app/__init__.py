"""The strangler facade: routes move one at a time from the legacy system to the new one.

Public API::

    create_app(legacy_url, new_db_url, ...) -> Flask   # the facade (WSGI app)
    RouteTable(new_db_url)                             # list / set / mode_for routes
    Mode                                               # legacy | new
    NEW_HANDLERS                                       # routes the new system can serve
"""

from skeleton_app.app import close_app, create_app
from skeleton_app.modes import Mode
from skeleton_app.new_routes import NEW_HANDLERS
from skeleton_app.patterns import RouteError
from skeleton_app.routes_table import AuditEntry, Route, RouteMatch, RouteTable

__all__ = [
    "NEW_HANDLERS",
    "AuditEntry",
    "Mode",
    "Route",
    "RouteError",
    "RouteMatch",
    "RouteTable",
    "close_app",
    "create_app",
]
