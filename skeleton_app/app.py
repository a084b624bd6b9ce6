"""The strangler facade: one catch-all route deciding, per request, who answers it.

Every response says who served it in ``X-Served-By``: ``legacy`` (proxied, including the
facade's 502/504 when the legacy system cannot be reached, and every fallback), ``new``
(answered by the new system) or ``facade`` (the facade's own endpoints: ``/_strangler/...``
and the metrics at ``/metrics``).

Per route (see ``Mode``): ``legacy`` proxies; ``aa`` and ``shadow`` proxy and hand a copy
of the exchange to the shadow worker once legacy's answer went out; ``canary N`` sends the
requests whose key falls in the first N% of buckets to the new system; ``new`` sends all.
Guards: when the new system fails or is too slow, or the read model lags more than
``max_lag``, legacy answers instead (counted in ``strangler_facade_fallbacks_total``).
A ``GET`` on a moved read route may be answered before any of this, by the direct path
(:mod:`skeleton_app.direct`), with the same answer, guards and metrics.

The routes of a write group are served by who owns the product a write is about (see
:mod:`skeleton_app.writes`): legacy (proxied), the new system's write path, or nobody
while it changes hands (503).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Literal, cast

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Rule

from skeleton_app import admin, canary, console, direct
from skeleton_app.compare import Answer
from skeleton_app.errors import json_error, printable
from skeleton_app.facade import EXTENSION, Facade, facade_of
from skeleton_app.lag_guard import LagGuard, LagStatus
from skeleton_app.lag_history import LagHistory
from skeleton_app.metrics import DecisionParityMetrics, FacadeMetrics, with_data_plane
from skeleton_app.modes import Mode
from skeleton_app.new_routes import DIRECT_HANDLERS, NEW_HANDLERS, NewHandler, NewRequest
from skeleton_app.new_system import NewSystem, NewSystemTimeout
from skeleton_app.new_writes import WRITE_HANDLERS, WriteHandler
from skeleton_app.openapi import document
from skeleton_app.operations import Operations
from skeleton_app.patterns import RESERVED_PREFIX, RouteKey, is_reserved
from skeleton_app.proxy import LegacyProxy, has_dot_segments, path_problem
from skeleton_app.read_model import (
    LagProvider,
    LazyReadModel,
    ReadModel,
    bounds_reads,
    lag_provider_of,
    time_limit_of,
)
from skeleton_app.read_model import open_new_read_model as open_new_read_model
from skeleton_app.readiness import readiness
from skeleton_app.routes_table import RouteMatch, RouteTable
from skeleton_app.settings import FacadeSettings
from skeleton_app.shadow import MUTATING, Candidate, ShadowJob, ShadowWorker
from skeleton_app.shadow_results import AA, SHADOW, ShadowResults
from skeleton_app.write_path import WritePathPort
from skeleton_app.writes import serve_write

log = logging.getLogger(__name__)

SERVED_BY = "X-Served-By"
_CLOSERS = "strangler.closers"
_SAFE_TO_RETRY = frozenset({"GET", "HEAD", "OPTIONS"})


def create_app(
    legacy_url: str,
    new_db_url: str,
    route_table: RouteTable | None = None,
    read_model: ReadModel | None = None,
    upstream_timeout: float | None = None,
    *,
    settings: FacadeSettings | None = None,
    lag_provider: LagProvider | None | Literal["read_model"] = "read_model",
    new_handlers: Mapping[RouteKey, NewHandler] | None = None,
    results: ShadowResults | None = None,
    metrics: FacadeMetrics | None = None,
    sample: Callable[[], float] = random.random,
    write_path: WritePathPort | None = None,
    write_handlers: Mapping[RouteKey, WriteHandler] | None = None,
    operations: Operations | None = None,
) -> Flask:
    """Build the facade. Connects to nothing until the first request.

    ``route_table`` defaults to a ``RouteTable`` over ``new_db_url`` (with the settings'
    cutover gate); ``read_model`` to ``new_domain.open_read_model(new_db_url)`` with the
    settings' ``new_timeout`` as its time limit, opened on first use; ``lag_provider`` to
    the read model's ``lag_seconds`` when it has one (None: no lag guard); ``new_handlers``
    to ``NEW_HANDLERS``; ``results`` to the shadow results in the route table's database.
    ``sample`` draws the shadow sampling numbers. When the read model bounds its reads
    itself (``time_limit``), routes of ``DIRECT_HANDLERS`` in mode ``new`` are served by
    the direct path (:mod:`skeleton_app.direct`). ``write_path`` is the new system's write
    path (built by the composition root; the caller closes it, e.g. with :func:`on_close`),
    which ``write_handlers`` (default ``WRITE_HANDLERS``) use for the products the new
    system owns; without it a write group cannot serve past ``shadow`` (503).
    ``operations`` reads the rest of the pipeline for the admin API and the console
    (built by the composition root; the caller closes it); without it those endpoints
    answer 503.
    """
    settings = settings or FacadeSettings()
    if upstream_timeout is not None:
        settings = replace(settings, upstream_timeout=upstream_timeout)
    app = Flask(__name__)
    # Byte-for-byte the JSON a (non-debug) Flask legacy system writes, even in debug mode.
    cast(DefaultJSONProvider, app.json).compact = True
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False

    table = route_table if route_table is not None else RouteTable(new_db_url, gate=settings.gate)
    model: ReadModel = (
        read_model
        if read_model is not None
        else LazyReadModel(
            lambda: open_new_read_model(new_db_url, time_limit=settings.new_timeout),
            time_limit=settings.new_timeout if bounds_reads(new_db_url) else None,
        )
    )
    if lag_provider == "read_model":
        lag_provider = lag_provider_of(model)
    metrics = metrics or FacadeMetrics()
    proxy = LegacyProxy(legacy_url, timeout=settings.upstream_timeout)
    handlers = NEW_HANDLERS if new_handlers is None else new_handlers
    new_system = NewSystem(
        app, handlers, model, timeout=settings.new_timeout, serve_workers=settings.new_workers
    )
    results = results or ShadowResults(table.engine, settings.gate.window)
    candidates: dict[str, Candidate] = {
        SHADOW: lambda job: _ask_new(new_system, job),
        AA: lambda job: _ask_legacy(proxy, job, settings),
    }
    shadow = ShadowWorker(
        candidates,
        metrics,
        results,
        queue_size=settings.shadow_queue_size,
        batch_size=settings.shadow_batch_size,
        flush_interval=settings.shadow_flush_interval,
        prune_interval=settings.shadow_prune_interval,
    )
    guard = LagGuard(
        lag_provider,
        settings.max_lag,
        settings.lag_check_interval,
        on_status=lambda status: _record_lag(metrics, status),
    )
    decisions = DecisionParityMetrics(
        metrics, new_system.decision_parity, settings.decision_parity_interval
    )
    history = LagHistory(table.engine, lag_provider, settings.lag_sample_interval)
    facade = Facade(
        settings,
        table,
        proxy,
        new_system,
        results,
        shadow,
        guard,
        metrics,
        write_path,
        WRITE_HANDLERS if write_handlers is None else write_handlers,
        decisions,
        history,
        operations,
    )
    app.extensions[EXTENSION] = facade
    if time_limit_of(model) is not None:
        # the read model gives up by itself: moved read routes may skip Flask and the pool
        direct.wrap(
            app,
            facade,
            model,
            {
                key: direct_handler
                for key, (handler, direct_handler) in DIRECT_HANDLERS.items()
                if handlers.get(key) is handler
            },
        )

    closers: list[Callable[[], None]] = [
        history.close,
        shadow.close,
        new_system.close,
        proxy.close,
    ]
    if route_table is None:
        closers.append(table.close)
    if read_model is None:
        closers.append(model.close)
    app.extensions[_CLOSERS] = closers

    def dispatch(path: str = "") -> Response:
        if request.method == "CONNECT":
            raise MethodNotAllowed(description="the facade is not a forward proxy")
        if is_reserved(request.path) or request.path == settings.metrics_path:
            return _facade_endpoint(facade)
        if has_dot_segments(request.path):
            raise BadRequest("paths with '.' or '..' segments are not forwarded")
        problem = path_problem(request.environ.get("PATH_INFO") or "/")
        if problem is not None:
            log.warning(
                "refused %s %s: %s", printable(request.method), printable(request.path), problem
            )
            raise BadRequest(f"{problem}; it is not forwarded")
        found = table.match(request.method, request.path)
        if found is None:
            _label("other", Mode.LEGACY.value)
            return _forward(facade, "other")
        route = f"{found.method} {found.pattern}"
        _label(route, found.mode.value)
        if found.group is not None:
            return serve_write(facade, found, route)
        if found.mode in (Mode.NEW, Mode.CANARY):
            return _serve_new_or_legacy(facade, found, route)
        if found.mode in (Mode.SHADOW, Mode.AA):
            return _forward_shadowed(facade, found, route, sample)
        return _forward(facade, route)

    app.url_map.add(Rule("/", endpoint="dispatch", defaults={"path": ""}))
    app.url_map.add(Rule("/<path:path>", endpoint="dispatch"))
    app.view_functions["dispatch"] = dispatch

    @app.after_request
    def served_by(response: Response) -> Response:
        who = g.get("served_by", "facade")
        response.headers[SERVED_BY] = who
        route = g.get("route")
        if route is not None:
            metrics.requests.labels(route, g.get("mode", "legacy"), who).inc()
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
        if isinstance(exc, ParseException):  # the request's body broke off or is malformed
            log.warning(
                "bad request body: %s %s: %s",
                printable(request.method),
                printable(request.path),
                printable(str(exc)),
            )
            return json_error(400, "bad request", f"malformed request body: {exc}"[:300])
        log.exception("facade failure: %s %s", printable(request.method), printable(request.path))
        detail = f"unexpected {type(exc).__name__}; see the facade's log"
        return json_error(500, "internal server error", detail)

    return app


def _record_lag(metrics: FacadeMetrics, status: LagStatus) -> None:
    if status.lag is not None:
        metrics.lag.set(status.lag)
    metrics.lag_guard.set(1 if status.tripped else 0)


def on_close(app: Flask, close: Callable[[], None]) -> None:
    """Call ``close`` when the app is closed (:func:`close_app`), e.g. the write path."""
    app.extensions[_CLOSERS].append(close)


def close_app(app: Flask) -> None:
    """Release what ``create_app`` opened (shadow thread, pools, HTTP pool, engines)."""
    for close in app.extensions.pop(_CLOSERS, []):
        try:
            close()
        except Exception:
            log.warning("error while closing the facade", exc_info=True)


# -- serving ---------------------------------------------------------------------------


def _label(route: str, mode: str) -> None:
    g.route = route
    g.mode = mode


def _forward(facade: Facade, route: str) -> Response:
    g.served_by = "legacy"
    latency = facade.metrics.latency.labels("legacy", route)
    return facade.proxy.forward(request, observe=latency.observe)


def _serve_new_or_legacy(facade: Facade, found: RouteMatch, route: str) -> Response:
    handler = facade.new_system.handler(found.method, found.pattern)
    if handler is None:
        return _forward(facade, route)
    handed_back = request.environ.get(direct.FALLBACK)
    if handed_back is not None:  # the direct path's read failed: legacy answers
        facade.metrics.fallbacks.labels(route, handed_back).inc()
        return _forward(facade, route)
    if found.mode is Mode.CANARY:
        key = canary.request_key(
            found.options.canary_key, request.path, found.args, request.headers, request.args
        )
        if not canary.serves_new(found.method, found.pattern, key, found.percent or 0.0):
            return _forward(facade, route)
    if facade.guard.tripped():
        facade.metrics.fallbacks.labels(route, "lag").inc()
        return _forward(facade, route)
    body = request.get_data(cache=False) if request.method in MUTATING else b""
    new_request = _new_request(found, body)
    started = time.perf_counter()
    try:
        response = facade.new_system.serve(handler, new_request)
    except Exception as exc:
        timed_out = isinstance(exc, NewSystemTimeout)
        if request.method not in _SAFE_TO_RETRY:
            # The new system may have applied it: sending it to legacy too could apply twice.
            log.warning(
                "new system %s on %s %s; not retried on legacy",
                "timed out" if timed_out else "failed",
                request.method,
                printable(request.path),
                exc_info=not timed_out,
            )
            g.served_by = "new"
            if timed_out:
                return json_error(504, "gateway timeout", str(exc))
            return json_error(
                502,
                "bad gateway",
                f"the new system failed to answer {request.method} {printable(request.path)}",
            )
        facade.metrics.fallbacks.labels(route, "timeout" if timed_out else "error").inc()
        log.warning(
            "new system %s on %s %s: legacy answers",
            "timed out" if timed_out else "failed",
            request.method,
            printable(request.path),
            exc_info=not timed_out,
        )
        return _forward(facade, route)
    facade.metrics.latency.labels("new", route).observe(time.perf_counter() - started)
    g.served_by = "new"
    return response


def _forward_shadowed(
    facade: Facade, found: RouteMatch, route: str, sample: Callable[[], float]
) -> Response:
    """Proxy to legacy; once its answer went out, queue the exchange for comparison."""
    settings, shadow = facade.settings, facade.shadow
    kind = AA if found.mode is Mode.AA else SHADOW
    method = request.method
    if method != found.method:  # HEAD on a GET route: nothing to compare
        return _forward(facade, route)
    if method in MUTATING and not found.options.allow_mutating_shadow:
        return _forward(facade, route)
    rate = found.options.sample_rate
    if sample() >= (settings.shadow_sample_rate if rate is None else rate):
        return _forward(facade, route)
    if kind == SHADOW and facade.guard.tripped():
        shadow.dropped(route, "lag")
        return _forward(facade, route)
    if shadow.full():
        shadow.dropped(route, "queue_full")
        return _forward(facade, route)
    length = request.content_length
    if (length or 0) > settings.shadow_max_body or (
        length is None and request.environ.get("wsgi.input_terminated") and method in MUTATING
    ):
        shadow.dropped(route, "too_large")
        return _forward(facade, route)
    body = request.get_data(cache=False) if length else b""
    new_request = _new_request(found, body, facade.proxy.request_headers(request))
    query = request.query_string.decode("latin-1")
    record_path = request.path + (f"?{query}" if query else "")

    def capture(answer: Answer | None, problem: str | None) -> None:
        if answer is None:
            shadow.dropped(route, problem or "incomplete")
            return
        shadow.offer(
            ShadowJob(
                kind, found.method, found.pattern, new_request, answer, found.options, record_path
            )
        )

    g.served_by = "legacy"
    latency = facade.metrics.latency.labels("legacy", route)
    return facade.proxy.forward(
        request,
        body=body,
        capture=capture,
        capture_limit=settings.shadow_max_body,
        observe=latency.observe,
    )


def _new_request(
    found: RouteMatch, body: bytes, headers: Mapping[str, str] | None = None
) -> NewRequest:
    sent = tuple(headers.items()) if headers is not None else tuple(request.headers.items())
    return NewRequest(
        request.method, request.path, dict(found.args), request.query_string, sent, body
    )


def _ask_new(new_system: NewSystem, job: ShadowJob) -> Answer:
    handler = new_system.handler(job.method, job.pattern)
    if handler is None:
        raise LookupError(f"the new system has no handler for {job.route}")
    return new_system.answer(handler, job.request)


def _ask_legacy(proxy: LegacyProxy, job: ShadowJob, settings: FacadeSettings) -> Answer:
    request = job.request
    return proxy.fetch(
        request.method,
        request.path,
        request.query_string,
        dict(request.headers),
        request.body,
        settings.shadow_max_body,
    )


# -- the facade's own endpoints --------------------------------------------------------


def _health() -> Response:
    return jsonify({"status": "ok"})


def _openapi() -> Response:
    return jsonify(document())


def _metrics(facade: Facade) -> Response:
    if facade.decisions is not None:
        facade.decisions.refresh()
    payload, content_type = facade.metrics.render()
    payload = with_data_plane(payload, facade.settings.data_plane_metrics)
    return Response(payload, content_type=content_type)


PUBLIC_ENDPOINTS: dict[str, tuple[frozenset[str], Callable[[], Response]]] = {
    f"{RESERVED_PREFIX}health": (frozenset({"GET", "HEAD"}), _health),
    f"{RESERVED_PREFIX}openapi.json": (frozenset({"GET", "HEAD"}), _openapi),
}
"""The facade's own endpoints anyone may call: path -> (methods, view)."""

READY_PATH = f"{RESERVED_PREFIX}ready"
"""Readiness (anyone may call it): what is degraded, 503 while anything is."""


def _facade_endpoint(facade: Facade) -> Response:
    if facade.lag_history is not None:
        # sampling opens the read model: it starts with the first request to the facade's
        # own endpoints (a metrics scrape, a health check, the console), not with traffic
        facade.lag_history.start()
    path = request.path
    if path in (facade.settings.metrics_path, f"{RESERVED_PREFIX}metrics"):
        _allow(frozenset({"GET", "HEAD"}))
        return _metrics(facade)
    if path == READY_PATH:
        _allow(frozenset({"GET", "HEAD"}))
        return readiness(facade)
    if console.serves(path):
        _allow(frozenset({"GET", "HEAD"}))
        return console.page(path)
    public = PUBLIC_ENDPOINTS.get(path)
    if public is not None:
        methods, view = public
        _allow(methods)
        return view()
    views = admin.ADMIN_ENDPOINTS.get(path)
    if views is None:
        raise NotFound(f"no facade endpoint at {path}")
    if not admin.enabled(facade):
        return admin.admin_off()
    if not admin.authorized(facade):
        return admin.unauthorized()
    _allow(frozenset(views))
    return views[request.method](facade)


def _allow(methods: frozenset[str]) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(valid_methods=sorted(methods))


__all__ = ["SERVED_BY", "close_app", "create_app", "facade_of", "on_close"]
