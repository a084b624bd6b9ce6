"""The data plane: a real proxy in front of the facade.

``strangler serve --data-plane haproxy`` runs HAProxy on the public port in front of the
facade (gunicorn) on a private one: HAProxy holds the clients' connections, buffers each
request whole, times out slow clients and enforces the request limits, so the facade's
threads only ever see complete requests. ``--data-plane none`` runs the facade alone.

Public API::

    data_plane_options(command)          # click options; the command gets ``data_plane``
    serve_facade(data_plane, run_server, options, ...)   # run gunicorn, behind HAProxy or not
    DataPlaneRouting, LEGACY, FACADE     # what the route table leaves to legacy, straight
    HAProxyPlane, Limits, Timeouts       # the data plane's settings
    render_haproxy_config(bind, backend, ...) -> str     # HAProxy's configuration
    find_haproxy() -> str | None
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from skeleton_app.dataplane.haproxy_config import Backend, Limits, Timeouts
from skeleton_app.dataplane.haproxy_config import render as render_haproxy_config
from skeleton_app.dataplane.options import data_plane_options, find_haproxy
from skeleton_app.dataplane.routing import FACADE, LEGACY, DataPlaneRouting
from skeleton_app.dataplane.supervisor import (
    METRICS_SOCKET_ENV,
    DataPlaneError,
    HAProxyPlane,
    serve_behind_haproxy,
)

__all__ = [
    "Backend",
    "DataPlaneError",
    "FACADE",
    "LEGACY",
    "DataPlaneRouting",
    "METRICS_SOCKET_ENV",
    "HAProxyPlane",
    "Limits",
    "Timeouts",
    "data_plane_options",
    "find_haproxy",
    "render_haproxy_config",
    "serve_facade",
]


def serve_facade(
    data_plane: HAProxyPlane | None,
    run_server: Callable[[Mapping[str, Any]], None],
    options: Mapping[str, Any],
    *,
    host: str,
    port: int,
    concurrency: int,
    upstream_timeout: float,
    new_timeout: float,
    routing: DataPlaneRouting | None = None,
) -> None:
    """Run the facade's server (``run_server(options)``) on ``host:port``, or behind
    HAProxy on ``host:port`` when ``data_plane`` is given (with ``routing``: what the
    route table leaves to legacy goes straight to legacy)."""
    if data_plane is None:
        run_server(options)
        return
    try:
        serve_behind_haproxy(
            data_plane,
            lambda extra: run_server({**options, **extra}),
            host=host,
            port=port,
            concurrency=concurrency,
            upstream_timeout=upstream_timeout,
            new_timeout=new_timeout,
            routing=routing,
        )
    except DataPlaneError as exc:
        raise click.ClickException(str(exc)) from None
