"""The direct path: a moved read route answered without Flask, on the request's thread.

Once a read route is in mode ``new`` every request for it is answered by the new system,
and that answer is the product the clients judge by its speed. The general path builds a
Flask request and response, routes the path twice (Flask's catch-all, then the route
table) and hands the handler to a thread pool so that a slow new system can be given up
after ``new_timeout``. For a ``GET`` on a route of ``DIRECT_HANDLERS`` in mode ``new``,
this WSGI layer in front of Flask does only what that answer needs: one route-table
lookup, the lag guard, the read, the JSON bytes, the metrics and ``X-Served-By: new``.

It runs only when the read model bounds its reads itself (``time_limit``, PostgreSQL's
statement timeout; see ``new_domain.open_read_model``), so no thread is needed to give up
a slow read. Everything else goes to the Flask app unchanged: other methods and modes
(canary, shadow, legacy), the facade's own endpoints, paths with dot segments, a tripped
lag guard. When the read fails, the request goes to the Flask app marked with the reason
(``FALLBACK``), which forwards it to legacy and counts the fallback, as for any new-system
failure. The answer is the same, byte for byte and header for header, as the general
path's (tests compare them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from werkzeug.http import HTTP_STATUS_CODES

from skeleton_app.errors import printable
from skeleton_app.modes import Mode
from skeleton_app.new_routes import JSON, DirectHandler
from skeleton_app.patterns import RouteKey
from skeleton_app.proxy import has_dot_segments, path_problem
from skeleton_app.read_model import ReadModel

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from skeleton_app.facade import Facade

log = logging.getLogger(__name__)

FALLBACK = "strangler.fallback"
"""WSGI environ key: why the direct path handed a request meant for new back ("error",
"timeout"); the Flask app then serves it from legacy and counts the fallback."""

SERVED_BY = "X-Served-By"
# the status lines werkzeug writes, so that both paths answer alike
_STATUS = {code: f"{code} {phrase.upper()}" for code, phrase in HTTP_STATUS_CODES.items()}


class DirectPath:
    """WSGI middleware: ``app`` (the Flask app's ``wsgi_app``) behind the direct path."""

    def __init__(
        self,
        app: WSGIApplication,
        facade: Facade,
        read_model: ReadModel,
        handlers: Mapping[RouteKey, DirectHandler],
    ) -> None:
        self._app = app
        self._facade = facade
        self._read_model = read_model
        self._handlers = dict(handlers)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not self._handlers or environ.get("REQUEST_METHOD") != "GET":
            return self._app(environ, start_response)
        # WSGI carries the path's bytes as latin-1; decoded as UTF-8, as Flask's request.path
        raw_path = environ.get("PATH_INFO") or "/"
        if path_problem(raw_path) is not None:  # the Flask app refuses it
            return self._app(environ, start_response)
        path = raw_path.encode("latin-1").decode("utf-8", "replace")
        facade = self._facade
        found = facade.table.match("GET", path)
        if found is None or found.mode is not Mode.NEW or has_dot_segments(path):
            return self._app(environ, start_response)
        handler = self._handlers.get((found.method, found.pattern))
        if handler is None or facade.guard.tripped():
            return self._app(environ, start_response)
        route = f"{found.method} {found.pattern}"
        started = time.perf_counter()
        try:
            answer = handler(self._read_model, found.args)
        except Exception as exc:
            timed_out = isinstance(exc, TimeoutError)
            log.warning(
                "new system %s on GET %s: legacy answers",
                "timed out" if timed_out else "failed",
                printable(path),
                exc_info=not timed_out,
            )
            environ[FALLBACK] = "timeout" if timed_out else "error"
            return self._app(environ, start_response)
        metrics = facade.metrics
        metrics.latency.labels("new", route).observe(time.perf_counter() - started)
        metrics.requests.labels(route, Mode.NEW.value, "new").inc()
        headers = [
            ("Content-Type", JSON),
            ("Content-Length", str(len(answer.body))),
            (SERVED_BY, "new"),
        ]
        start_response(_status_line(answer.status), headers)
        return [answer.body]


def _status_line(status: int) -> str:
    return _STATUS.get(status) or f"{status} UNKNOWN"


def wrap(
    app: Any, facade: Facade, read_model: ReadModel, handlers: Mapping[RouteKey, DirectHandler]
) -> None:
    """Put the direct path in front of the Flask ``app``'s WSGI callable."""
    app.wsgi_app = DirectPath(app.wsgi_app, facade, read_model, handlers)
