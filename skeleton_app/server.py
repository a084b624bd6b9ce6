"""Running the facade under gunicorn: one app per worker, created after the fork.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``strangler serve`` sets it), the master tells
prometheus_client about each worker that exits, so its live gauges disappear.

Requests gunicorn itself refuses (a malformed request line, header or chunk, a request line
or headers over its limits) get the facade's JSON error, ``{"error": ..., "detail": ...}``,
instead of gunicorn's HTML page: each worker replaces the function gunicorn writes those
pages with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import gunicorn.util
from flask import Flask
from gunicorn.app.base import BaseApplication

from skeleton_app.app import close_app
from skeleton_app.metrics import mark_process_dead


class FacadeServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with settings given in code; ``factory`` runs in each worker process."""

    def __init__(self, factory: Callable[[], Flask], options: Mapping[str, Any]) -> None:
        self._factory = factory
        self._options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", _worker_exit)
        self.cfg.set("post_worker_init", _json_errors)
        self.cfg.set("child_exit", _child_exit)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25.1 opens one control socket per user by default: several
            # servers on one machine would take it from each other.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        return self._factory()


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        close_app(app)


def _json_errors(worker: Any) -> None:
    gunicorn.util.write_error = write_json_error


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` (its answer to a request it refuses), in JSON."""
    detail = mesg or "the request could not be handled"
    body = json.dumps({"error": reason.lower(), "detail": detail}, separators=(",", ":"))
    payload = body.encode() + b"\n"
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + payload)


def _child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)


def gunicorn_options(
    host: str, port: int, workers: int, threads: int, upstream_timeout: float
) -> dict[str, Any]:
    """Settings for the facade: threaded workers, timeouts longer than the upstream's."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": max(30, int(upstream_timeout) + 10),
        "graceful_timeout": max(10, int(upstream_timeout) + 5),
        "preload_app": False,
        "proc_name": "strangler-facade",
        "errorlog": "-",
    }
