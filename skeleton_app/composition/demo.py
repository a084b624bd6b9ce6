"""``strangler demo``: the whole walking skeleton in one process, no servers needed.

SQLite legacy and new databases in a temporary folder, the in-process broker, the legacy
shop and the facade on local ports, the bridge relay and the consumer in threads. It
seeds the legacy shop through the facade, switches the read route to the new system and
prints a few orders' allocations from both systems side by side. Then it moves the write
group to the new system, allocates through the facade (the new system decides), and shows
the decision in legacy's own ``GET /batches/<ref>``, written there by back-sync.
"""

from __future__ import annotations

import logging
import secrets
import signal
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

import backsync
import broker
import legacy_bridge
import new_domain
from examples import legacy_shop
from skeleton_app import FacadeSettings, RouteTable, create_app

READ_ROUTE = ("GET", "/allocations/<orderid>")
WRITE_ROUTE = ("POST", "/allocate")
NEW_ALLOCATION = {"orderid": "order-6", "sku": "GREEN-LAMP", "qty": 3}
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


def run_demo(
    folder: Path,
    echo: Callable[[str], None] = click.echo,
    timeout: float = 30.0,
    *,
    admin_token: str | None = None,
    hold: Callable[[str], None] | None = None,
) -> bool:
    """Run the demo in ``folder``; returns True when both systems agreed on every order.

    ``admin_token`` turns the facade's admin API (and its console) on; ``hold``, when
    given, is called with the facade's URL at the end, everything still running, and the
    demo stops when it returns."""
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

        outbox = new_domain.open_outbox_relay(new_db, lambda: broker.connect(broker_url))
        stack.callback(outbox.engine.dispose)
        stack.callback(outbox.close)
        _start_backsync(stack, legacy_db, broker_url)
        stack.enter_context(_loop("outbox", outbox.run))

        routes = RouteTable(new_db, refresh_interval=0.0)
        write_path = new_domain.WritePath(new_db)
        stack.callback(write_path.close)
        facade_app = create_app(
            legacy_url,
            new_db,
            route_table=routes,
            write_path=write_path,
            settings=FacadeSettings(admin_token=admin_token),
        )
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
        moved = _move_the_writes(routes, http, facade, legacy_url, echo, timeout)
        if hold is not None:
            hold(facade)
        return moved and agreed


def _start_backsync(stack: ExitStack, legacy_db: str, broker_url: str) -> None:
    """Back-sync in a thread: its tables in legacy, its queue declared before anything
    is published."""
    engine = backsync.make_engine(legacy_db)
    stack.callback(engine.dispose)
    backsync.install_tables(engine, backsync.QUEUE)
    declared = broker.connect(broker_url)
    try:
        backsync.declare(declared, backsync.QUEUE, backsync.EXCHANGE)
    finally:
        declared.close()
    writer = backsync.Writer(engine, backsync.LEGACY_SHOP, backsync.QUEUE)
    worker = backsync.BackSync(writer, lambda: broker.connect(broker_url), settle=0.0)
    stack.enter_context(_loop("backsync", worker.run))


def _move_the_writes(
    routes: RouteTable,
    http: requests.Session,
    facade: str,
    legacy_url: str,
    echo: Callable[[str], None],
    timeout: float,
) -> bool:
    """Move the write group to new, allocate through the facade, show legacy's batch."""
    before = {
        b["ref"]: http.get(f"{legacy_url}/batches/{b['ref']}", timeout=10).json()["allocated"]
        for b in BATCHES
    }
    moved = routes.set(*WRITE_ROUTE, "new", by="demo", reason="demo: the writes move")
    echo(f"\nwrite group     {moved.group} -> new (its four write routes move together)")
    started = time.monotonic()
    response = None
    while time.monotonic() - started < timeout:  # 503 while the products change hands
        response = http.post(f"{facade}/allocate", json=NEW_ALLOCATION, timeout=10)
        if response.status_code != 503:
            break
        time.sleep(float(response.headers.get("Retry-After", "1")) / 20)
    if response is None or response.status_code != 201:
        detail = "no answer" if response is None else f"{response.status_code} {response.text}"
        echo(f"allocation      through the facade failed: {detail}")
        return False
    batchref = response.json()["batchref"]
    echo(
        f"allocated       {NEW_ALLOCATION['orderid']} {NEW_ALLOCATION['sku']} x"
        f"{NEW_ALLOCATION['qty']} -> {batchref} (served by"
        f" {response.headers.get('X-Served-By', '?')}) in"
        f" {(time.monotonic() - started) * 1000:.0f} ms"
    )
    expected = before[batchref] + NEW_ALLOCATION["qty"]
    while True:
        batch = http.get(f"{legacy_url}/batches/{batchref}", timeout=10).json()
        if batch.get("allocated") == expected or time.monotonic() - started > timeout:
            break
        time.sleep(0.05)
    echo(
        f"legacy's own    GET /batches/{batchref}: allocated {batch.get('allocated')},"
        f" available {batch.get('available')} (written back by back-sync)"
    )
    return bool(batch.get("allocated") == expected)


CONSOLE_PATH = "/_strangler/ui"


def _run_until_stopped(token: str) -> Callable[[str], None]:
    """``hold`` for ``--keep-running``: print where the console is, wait for Ctrl-C or
    SIGTERM."""

    def hold(facade: str) -> None:
        click.echo(f"\nadmin token     {token}  (for the console's login form)")
        click.echo("running         until Ctrl-C")
        click.echo(f"console         {facade}{CONSOLE_PATH}")
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)

    return hold


@click.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the databases in this folder instead of a temporary one.",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Keep the legacy shop, the pipeline and the facade running at the end (until "
    "Ctrl-C), with the admin API on, and print the URL of the facade's console.",
)
def demo(keep: Path | None, keep_running: bool) -> None:
    """Run the whole pipeline in one process on SQLite and the in-process broker.

    Prints only its own lines: the kit's and the libraries' log lines show with -v.
    """
    if not click.get_current_context().find_root().params.get("verbose"):
        logging.getLogger().setLevel(logging.WARNING)
    token = secrets.token_urlsafe(18) if keep_running else None
    hold = _run_until_stopped(token) if token is not None else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        ok = run_demo(keep, admin_token=token, hold=hold)
    else:
        with tempfile.TemporaryDirectory(prefix="strangler-demo-") as folder:
            ok = run_demo(Path(folder), admin_token=token, hold=hold)
    if not ok:
        raise click.ClickException("the new system's answers differ from legacy's")
