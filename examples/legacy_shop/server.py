"""Serving the shop under gunicorn (threaded workers; SIGTERM stops it gracefully)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from examples.legacy_shop.app import create_app
from examples.legacy_shop.database import make_engine
from examples.legacy_shop.schema import create_schema


class ShopServer(BaseApplication):  # type: ignore[misc]
    """A gunicorn application whose workers each build their own app (and engine)."""

    def __init__(self, db_url: str, options: dict[str, Any]) -> None:
        self.db_url = db_url
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25.1 otherwise binds one per-user control socket
            # ($HOME/.gunicorn/gunicorn.ctl) that every other gunicorn would share.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        return create_app(self.db_url)


def prepare_database(db_url: str) -> None:
    """Create the schema once, before any worker is forked (workers never race on it)."""
    engine = make_engine(db_url)
    try:
        create_schema(engine)
    finally:
        engine.dispose()


def serve(db_url: str, host: str, port: int, workers: int, threads: int) -> None:
    """Run gunicorn in the foreground; returns when it has stopped (SIGTERM/SIGINT)."""
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "graceful_timeout": 10,
        "proc_name": "strangler-legacy-shop",
    }
    ShopServer(db_url, options).run()
