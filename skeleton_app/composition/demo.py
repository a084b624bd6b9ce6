"""``strangler demo``: the whole walking skeleton in one process, no servers needed.

SQLite legacy and new databases in a temporary folder, the in-process broker, the legacy
shop and the facade on local ports, the bridge relay and the consumer in threads. It
seeds the legacy shop through the facade, switches the read route to the new system and
prints a few orders' allocations from both systems side by side.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import requests
from flask import Flask
from werkzeug.serving import make_server

import broker
import legacy_bridge
import new_domain
from examples import legacy_shop
from skeleton_app import RouteTable, create_app

READ_ROUTE = ("GET", "/allocations/<orderid>")
BATCHES = [
    {"ref": "warehouse-chairs", "sku": "RED-CHAIR", "qty": 10, "eta": None},
    {"ref": "ship-chairs-jan", "sku": "RED-CHAIR", "qty": 50, "eta": "2027-01-15"},
    {"ref": "ship-chairs-mar", "sku": "RED-CHAIR", "qty": 50, "eta": "2027-03-01"},
    {"ref": "warehouse-lamps", "sku": "GREEN-LAMP", "qty": 5, "eta": None},
    {"ref": "ship-lamps-feb", "sku": "GREEN-LAMP", "qty": 20, "eta": "2027-02-01"},
]
ALLOCATIONS = [
    ("order-1", "RED-CHAIR", 4),
    ("order-1", "GREEN-LAMP", 2),
    ("order-2", "RED-CHAIR", 5),
    ("order-3", "RED-CHAIR", 3),
    ("order-3", "GREEN-LAMP", 4),
    ("order-4", "GREEN-LAMP", 1),
]


@contextmanager
def _serve(app: Flask) -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request lines
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


@contextmanager
def _loop(name: str, run: Callable[[threading.Event], None]) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _call(http: requests.Session, method: str, url: str, body: dict[str, Any]) -> Any:
    response = http.request(method, url, json=body, timeout=10)
    if response.status_code >= 400:
        raise click.ClickException(
            f"{method} {url} answered {response.status_code}: {response.text}"
        )
    return response.json()


def _answer(http: requests.Session, url: str) -> tuple[int, Any, str]:
    response = http.get(url, timeout=10)
    return response.status_code, response.json(), response.headers.get("X-Served-By", "?")


def _format(status: int, body: Any) -> str:
    if status != 200:
        return f"{status} {body.get('error', body)}"
    return ", ".join(f"{a['sku']}@{a['batchref']}" for a in body)


def run_demo(folder: Path, echo: Callable[[str], None] = click.echo, timeout: float = 30.0) -> bool:
    """Run the demo in ``folder``; returns True when both systems agreed on every order."""
    legacy_db = f"sqlite:///{folder / 'legacy.db'}"
    new_db = f"sqlite:///{folder / 'new_domain.db'}"
    broker_url = f"memory://demo-{uuid.uuid4().hex[:8]}"
    orders = sorted({orderid for orderid, _, _ in ALLOCATIONS} | {"order-5"})

    with ExitStack() as stack:
        legacy_url = stack.enter_context(_serve(legacy_shop.create_app(legacy_db)))
        echo(f"legacy shop     {legacy_url}  ({legacy_db})")
        installed = legacy_bridge.install(legacy_db, legacy_shop.TABLES)
        echo(f"bridge          capturing {', '.join(t.name for t in installed.tables)}")
        new_domain.upgrade_database(new_db)

        consumer = new_domain.Consumer(
            new_domain.bootstrap(new_db), lambda: broker.connect(broker_url)
        )
        consumer.connect()  # declares its queue before the relay publishes
        stack.callback(consumer.close)
        stack.enter_context(_loop("consumer", consumer.run))
        relay = legacy_bridge.Relay(legacy_db, broker_factory=lambda: broker.connect(broker_url))
        stack.callback(relay.close)
        stack.enter_context(_loop("relay", relay.run))

        routes = RouteTable(new_db, refresh_interval=0.0)
        facade_app = create_app(legacy_url, new_db, route_table=routes)
        facade = stack.enter_context(_serve(facade_app))
        echo(f"facade          {facade}  (broker {broker_url})")

        http = requests.Session()
        for batch in BATCHES:
            _call(http, "POST", f"{facade}/batches", batch)
        for orderid, sku, qty in ALLOCATIONS:
            _call(http, "POST", f"{facade}/allocate", {"orderid": orderid, "sku": sku, "qty": qty})
        _call(http, "POST", f"{facade}/deallocate", {"orderid": "order-4", "sku": "GREEN-LAMP"})
        shrunk = _call(http, "PATCH", f"{facade}/batches/warehouse-chairs", {"qty": 5})
        echo(
            f"seeded          {len(BATCHES)} batches, {len(ALLOCATIONS)} allocations,"
            " 1 deallocation; warehouse-chairs shrunk to 5,"
            f" reallocated {len(shrunk['reallocated'])} line(s)"
        )

        routes.set(*READ_ROUTE, "new", by="demo", reason="demo cutover")
        echo("route           GET /allocations/<orderid> -> new")

        started = time.monotonic()
        while True:
            legacy_answers = {o: _answer(http, f"{legacy_url}/allocations/{o}") for o in orders}
            new_answers = {o: _answer(http, f"{facade}/allocations/{o}") for o in orders}
            agreed = all(legacy_answers[o][:2] == new_answers[o][:2] for o in orders)
            if agreed or time.monotonic() - started > timeout:
                break
            time.sleep(0.05)
        echo(f"caught up       in {(time.monotonic() - started) * 1000:.0f} ms\n")

        echo(f"{'order':<10} {'legacy system':<55} {'new system (via facade)':<55} served-by")
        for o in orders:
            (ls, lb, _), (ns, nb, served_by) = legacy_answers[o], new_answers[o]
            mark = "" if (ls, lb) == (ns, nb) else "  <- differs"
            echo(f"{o:<10} {_format(ls, lb):<55} {_format(ns, nb):<55} {served_by}{mark}")
        echo("")
        echo("both systems agree on every order" if agreed else "the systems DISAGREE")
        return agreed


@click.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the databases in this folder instead of a temporary one.",
)
def demo(keep: Path | None) -> None:
    """Run the whole pipeline in one process on SQLite and the in-process broker."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        ok = run_demo(keep)
    else:
        with tempfile.TemporaryDirectory(prefix="strangler-demo-") as folder:
            ok = run_demo(Path(folder))
    if not ok:
        raise click.ClickException("the new system's answers differ from legacy's")
