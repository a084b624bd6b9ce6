"""The same write requests, from the same (empty) start, answered by the legacy shop and by
the facade with write group ``allocation`` on ``new`` (the new system's write path on
PostgreSQL): the same status and JSON for every one, successes and refusals alike.

The facade's legacy URL points nowhere: a write it sent to legacy would be a 502.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import create_engine, update
from werkzeug.serving import make_server

from examples import legacy_shop
from new_domain import WritePath, upgrade_database
from new_domain.adapters import orm
from skeleton_app import FacadeSettings, RouteTable, close_app, create_app

pytestmark = pytest.mark.postgres

NOWHERE = "http://127.0.0.1:9"

BAD_BODIES: list[tuple[str, str, bytes]] = [
    ("POST", "/allocate", b"not json"),
    ("POST", "/allocate", b"[]"),
    ("POST", "/allocate", b'{"orderid": "o\\u0000", "sku": "LAMP", "qty": 1}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "LAMP", "qty": "1"}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "LAMP", "qty": true}'),
    ("POST", "/allocate", b'{"orderid": "o", "sku": "LAMP"}'),
    ("POST", "/deallocate", b'{"orderid": 1, "sku": "LAMP"}'),
    ("POST", "/batches", b'{"ref": "b", "sku": "LAMP", "qty": 1, "eta": "2027-13-01"}'),
    ("POST", "/batches", b'{"ref": "b", "sku": "LAMP", "qty": 0, "eta": null}'),
    ("PATCH", "/batches/b-ship", b'{"qty": -1}'),
    ("PATCH", "/batches/b-ship", b'{"qty": 2147483648}'),
    ("POST", "/allocate", b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'),
]

SCRIPT: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/batches", {"ref": "b-warehouse", "sku": "LAMP", "qty": 10, "eta": None}),
    ("POST", "/batches", {"ref": "b-ship", "sku": "LAMP", "qty": 20, "eta": "2027-01-15"}),
    ("POST", "/batches", {"ref": "b-late", "sku": "LAMP", "qty": 5, "eta": "2027-03-01"}),
    ("POST", "/batches", {"ref": "b-chairs", "sku": "CHAIR", "qty": 4, "eta": None}),
    ("POST", "/batches", {"ref": "b-ship", "sku": "CHAIR", "qty": 1, "eta": None}),  # 409
    ("POST", "/allocate", {"orderid": "o-1", "sku": "LAMP", "qty": 8}),
    ("POST", "/allocate", {"orderid": "o-2", "sku": "LAMP", "qty": 5}),
    ("POST", "/allocate", {"orderid": "o-1", "sku": "LAMP", "qty": 1}),  # 409 already
    ("POST", "/allocate", {"orderid": "o-3", "sku": "LAMP", "qty": 100}),  # 409 out of stock
    ("POST", "/allocate", {"orderid": "o-3", "sku": "GHOST", "qty": 1}),  # 400 unknown sku
    ("POST", "/allocate", {"orderid": "o-4", "sku": "LAMP", "qty": 2}),
    ("POST", "/allocate", {"orderid": "o-1", "sku": "CHAIR", "qty": 4}),
    ("PATCH", "/batches/b-warehouse", {"qty": 3}),  # o-4 and o-1 move, newest off first
    ("PATCH", "/batches/b-chairs", {"qty": 0}),  # o-1's chairs fit nowhere: unallocated
    ("PATCH", "/batches/nope", {"qty": 1}),  # 404
    ("POST", "/allocate", {"orderid": "o-1", "sku": "CHAIR", "qty": 3}),  # 409: none left
    ("PATCH", "/batches/b-chairs", {"qty": 10}),
    ("POST", "/allocate", {"orderid": "o-1", "sku": "CHAIR", "qty": 3}),  # its line again
    ("POST", "/deallocate", {"orderid": "o-2", "sku": "LAMP"}),
    ("POST", "/deallocate", {"orderid": "o-2", "sku": "LAMP"}),  # 404
    ("POST", "/deallocate", {"orderid": "o-9", "sku": "GHOST"}),  # 400 unknown sku
    ("PATCH", "/batches/b-ship", {"qty": 8}),
    ("PATCH", "/batches/b-ship", {"qty": 0}),
    ("POST", "/allocate", {"orderid": "o-5", "sku": "LAMP", "qty": 5}),
    ("POST", "/batches", {"ref": "b-new-sku", "sku": "DESK", "qty": 1, "eta": "2026-12-24"}),
    ("POST", "/allocate", {"orderid": "o-6", "sku": "DESK", "qty": 1}),
    ("POST", "/allocate", {"orderid": "o-7", "sku": "DESK", "qty": 1}),  # 409 out of stock
]


@contextmanager
def _serve(app: Flask) -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def systems(pg_url_factory: Any) -> Iterator[tuple[str, str]]:
    """(legacy shop, facade with the write group and the read route on new)."""
    legacy_db, new_db = pg_url_factory(), pg_url_factory()
    upgrade_database(new_db)
    table = RouteTable(new_db, refresh_interval=0.0)
    table.set("POST", "/allocate", "new", by="test", reason="parity")
    table.set("GET", "/allocations/<orderid>", "new", by="test", reason="parity")
    engine = create_engine(new_db)
    with engine.begin() as conn:  # the move's fence came back
        conn.execute(update(orm.write_ownership).values(state="active", previous_rule=None))
    engine.dispose()
    write_path = WritePath(new_db)
    facade = create_app(
        NOWHERE,
        new_db,
        route_table=table,
        write_path=write_path,
        settings=FacadeSettings(new_timeout=10.0, max_lag=None),
    )
    try:
        with (
            _serve(legacy_shop.create_app(legacy_db)) as legacy_url,
            _serve(facade) as facade_url,
        ):
            yield legacy_url, facade_url
    finally:
        close_app(facade)
        write_path.close()
        table.close()


def _both(
    systems: tuple[str, str], method: str, path: str, **kwargs: Any
) -> tuple[requests.Response, requests.Response]:
    legacy_url, facade_url = systems
    legacy = requests.request(method, legacy_url + path, timeout=30, **kwargs)
    facade = requests.request(method, facade_url + path, timeout=30, **kwargs)
    return legacy, facade


def test_every_write_route_answers_exactly_as_legacy_does(systems: tuple[str, str]) -> None:
    statuses = set()
    for method, path, body in SCRIPT:
        legacy, facade = _both(systems, method, path, json=body)
        assert (facade.status_code, facade.json()) == (legacy.status_code, legacy.json()), (
            method,
            path,
            body,
        )
        assert facade.content == legacy.content  # byte for byte, key order included
        assert facade.headers["X-Served-By"] == "new", (method, path, facade.text)
        statuses.add(facade.status_code)
    assert statuses == {200, 201, 400, 404, 409}

    for method, path, raw in BAD_BODIES:
        headers = {"Content-Type": "application/json"}
        legacy, facade = _both(systems, method, path, data=raw, headers=headers)
        assert (facade.status_code, facade.content) == (legacy.status_code, legacy.content), (
            method,
            path,
            raw[:40],
        )
        assert facade.headers["X-Served-By"] == "facade"

    # and the new system's read model agrees with legacy's allocations after all that
    for orderid in ("o-1", "o-2", "o-3", "o-4", "o-5", "o-6", "o-7"):
        legacy, facade = _both(systems, "GET", f"/allocations/{orderid}")
        assert (facade.status_code, facade.content) == (legacy.status_code, legacy.content)
