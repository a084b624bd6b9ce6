"""The strangler facade: one catch-all route deciding, per request, who answers it.

Every response says who served it in ``X-Served-By``: ``legacy`` (proxied, including the
facade's 502/504 when the legacy system cannot be reached), ``new`` (answered by the new
system) or ``facade`` (the facade's own endpoints under ``/_strangler/``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Rule

from skeleton_app.errors import json_error
from skeleton_app.modes import Mode
from skeleton_app.new_routes import NEW_HANDLERS
from skeleton_app.patterns import RESERVED_PREFIX, is_reserved
from skeleton_app.proxy import LegacyProxy
from skeleton_app.read_model import LazyReadModel, ReadModel, open_new_read_model
from skeleton_app.routes_table import RouteTable

log = logging.getLogger(__name__)

SERVED_BY = "X-Served-By"
_CLOSERS = "strangler.closers"


def create_app(
    legacy_url: str,
    new_db_url: str,
    route_table: RouteTable | None = None,
    read_model: ReadModel | None = None,
    upstream_timeout: float = 10.0,
) -> Flask:
    """Build the facade. Connects to nothing until the first request.

    ``route_table`` defaults to a ``RouteTable`` over ``new_db_url``; ``read_model`` to
    ``new_domain.open_read_model(new_db_url)``, opened on first use.
    """
    app = Flask(__name__)
    # Byte-for-byte the JSON a (non-debug) Flask legacy system writes, even in debug mode.
    cast(DefaultJSONProvider, app.json).compact = True
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False

    table = route_table if route_table is not None else RouteTable(new_db_url)
    model = read_model if read_model is not None else LazyReadModel(
        lambda: open_new_read_model(new_db_url)
    )
    proxy = LegacyProxy(legacy_url, timeout=upstream_timeout)
    closers = [proxy.close]
    if route_table is None:
        closers.append(table.close)
    if read_model is None:
        closers.append(model.close)
    app.extensions[_CLOSERS] = closers

    def dispatch(path: str = "") -> Response:
        if is_reserved(request.path):
            return _facade_endpoint()
        found = table.match(request.method, request.path)
        if found is not None and found.mode is Mode.NEW:
            handler = NEW_HANDLERS.get((found.method, found.pattern))
            if handler is not None:
                g.served_by = "new"
                try:
                    return handler(model, found.args)
                except Exception:
                    log.exception("new system failed: %s %s", request.method, request.path)
                    return json_error(
                        502,
                        "bad gateway",
                        f"the new system failed to answer {request.method} {request.path}",
                    )
        g.served_by = "legacy"
        return proxy.forward(request)

    app.url_map.add(Rule("/", endpoint="dispatch", defaults={"path": ""}))
    app.url_map.add(Rule("/<path:path>", endpoint="dispatch"))
    app.view_functions["dispatch"] = dispatch

    @app.after_request
    def served_by(response: Response) -> Response:
        response.headers[SERVED_BY] = g.get("served_by", "facade")
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        response = json_error(code, (exc.name or "error").lower(), exc.description or "")
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("facade failure: %s %s", request.method, request.path)
        detail = f"unexpected {type(exc).__name__}; see the facade's log"
        return json_error(500, "internal server error", detail)

    return app


def close_app(app: Flask) -> None:
    """Release what ``create_app`` opened (HTTP pool, database engines)."""
    for close in app.extensions.pop(_CLOSERS, []):
        try:
            close()
        except Exception:
            log.warning("error while closing the facade", exc_info=True)


def _health() -> Response:
    return jsonify({"status": "ok"})


FACADE_ENDPOINTS: dict[str, tuple[frozenset[str], Callable[[], Response]]] = {
    f"{RESERVED_PREFIX}health": (frozenset({"GET", "HEAD"}), _health),
}
"""The facade's own endpoints: path -> (methods, view)."""


def _facade_endpoint() -> Response:
    endpoint = FACADE_ENDPOINTS.get(request.path)
    if endpoint is None:
        raise NotFound(f"no facade endpoint at {request.path}")
    methods, view = endpoint
    if request.method not in methods:
        raise MethodNotAllowed(valid_methods=sorted(methods))
    return view()
