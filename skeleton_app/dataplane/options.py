"""``strangler serve``'s data plane options, and choosing the data plane from them."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from skeleton_app.dataplane.haproxy_config import Limits
from skeleton_app.dataplane.supervisor import HAProxyPlane

HAPROXY = "haproxy"
NONE = "none"
_SBIN = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")


def find_haproxy() -> str | None:
    """The haproxy binary: on PATH, or where Debian and source builds put it (sbin, which
    is not on every user's PATH)."""
    found = shutil.which(HAPROXY)
    if found:
        return found
    return next((path for path in _SBIN if Path(path).is_file()), None)


def choose_data_plane(
    choice: str | None, request_timeout: float, max_body: int, max_connections: int
) -> HAProxyPlane | None:
    """HAProxy when asked for or (no choice) when installed; None: gunicorn alone."""
    if choice == NONE:
        return None
    binary = find_haproxy()
    if binary is None:
        if choice == HAPROXY:
            raise click.ClickException(
                "--data-plane haproxy: the haproxy binary is not installed (apt-get install "
                "haproxy), or choose --data-plane none"
            )
        click.echo(
            "strangler serve: warning: haproxy is not installed; serving without a "
            "data plane, where a few slow clients can stall the facade "
            "(see docs/architecture.md, Data plane)",
            err=True,
        )
        return None
    return HAProxyPlane(
        binary,
        request_timeout=request_timeout,
        limits=Limits(body=max_body),
        max_connections=max_connections,
    )


def data_plane_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the options; the command receives ``data_plane: HAProxyPlane | None``."""

    @functools.wraps(command)
    def with_data_plane(
        *args: Any,
        data_plane: str | None,
        request_timeout: float,
        max_body: int,
        max_connections: int,
        **kwargs: Any,
    ) -> Any:
        plane = choose_data_plane(data_plane, request_timeout, max_body, max_connections)
        return command(*args, data_plane=plane, **kwargs)

    options = [
        click.option(
            "--data-plane",
            type=click.Choice([HAPROXY, NONE]),
            envvar="STRANGLER_DATA_PLANE",
            default=None,
            help="haproxy: HAProxy on --port buffers whole requests, times out "
            "slow clients and enforces the limits, in front of the facade on a "
            "private port; none: the facade alone on --port. Default: haproxy when "
            "installed (env STRANGLER_DATA_PLANE).",
        ),
        click.option(
            "--request-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=10.0,
            show_default=True,
            help="Seconds a client has to send a whole request, headers and body; "
            "slower ones get 408 (data plane haproxy).",
        ),
        click.option(
            "--max-body",
            type=click.IntRange(min=0),
            default=Limits().body,
            show_default=True,
            help="Largest request body in bytes; larger ones get 413 (data plane "
            "haproxy, which buffers bodies whole).",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=1),
            default=4096,
            show_default=True,
            help="Client connections the data plane holds at once (haproxy).",
        ),
    ]
    for option in reversed(options):
        with_data_plane = option(with_data_plane)
    return with_data_plane
