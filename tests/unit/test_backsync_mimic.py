"""Back-sync writes exactly the rows the legacy shop's own code writes for a decision.

Two twin legacy databases (SQLite, both captured by the bridge) share a history. The
shop's own code takes a request on one; back-sync writes the same decision, as the new
system publishes it, on the other. The captured row changes are the same, row for row
and in order, except that back-sync's transaction starts with its origin marker and the
rows themselves end up equal.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from backsync import LEGACY_SHOP, QUEUE, Refused, Writer, install_tables
from backsync.messages import Decision, MalformedMessage, MoveMessage, parse
from backsync.pending import Group, Pending
from broker import Delivery, Message
from examples import legacy_shop
from tests.backsync_support import (
    change_mark,
    changes_since,
    decision_messages,
    engine_for,
    legacy_database,
    move_message,
)

ADD_BATCH, ALLOCATE = "POST /batches", "POST /allocate"
DEALLOCATE, CHANGE_QUANTITY = "POST /deallocate", "PATCH /batches/<ref>"
SHOP_TABLES = {
    "prod_catalog": "prod_id",
    "stock_lot": "lot_id",
    "cust_order_line": "line_id",
    "lot_allocation": "alloc_id",
}


def decision_of(messages: Sequence[Message]) -> Decision:
    """The decision back-sync gathers from these messages."""
    pending = Pending()
    for tag, message in enumerate(messages, 1):
        pending.add(Delivery(message, tag, False, "new_domain.events"), 0.0)
    group = pending.head
    assert isinstance(group, Group) and group.complete
    return group.decision()


@dataclass
class Twins:
    legacy: FlaskClient  # the shop's own code decides here
    mimic: FlaskClient  # the same shop, for the shared history only
    legacy_engine: Engine
    mimic_engine: Engine
    writer: Writer
    legacy_changes: list[tuple[str, str, Any, Any]] | None = None
    mimic_changes: list[tuple[str, str, Any, Any]] | None = None

    def history(self, method: str, path: str, body: dict[str, Any]) -> None:
        """The same request on both twins (what happened before the move)."""
        for shop in (self.legacy, self.mimic):
            response = shop.open(path, method=method, json=body)
            assert response.status_code < 300, response.get_json()

    def legacy_does(self, method: str, path: str, body: dict[str, Any]) -> Any:
        mark = change_mark(self.legacy_engine)
        response = self.legacy.open(path, method=method, json=body)
        assert response.status_code < 300, response.get_json()
        self.legacy_changes = changes_since(self.legacy_engine, mark)
        return response.get_json()

    def backsync_writes(
        self, route: str, sku: str, summary: str, events: Sequence[tuple[str, dict[str, Any]]]
    ) -> Decision:
        decision = decision_of(decision_messages(route, sku, summary, events))
        mark = change_mark(self.mimic_engine)
        assert self.writer.write_decision(decision).written
        self.mimic_changes = changes_since(self.mimic_engine, mark)
        return decision

    def assert_same_rows(self, decision: Decision) -> None:
        assert self.mimic_changes is not None and self.legacy_changes is not None
        marker, *rows = self.mimic_changes
        assert rows == self.legacy_changes
        assert marker[:3] == ("strangler_origin", "c", None)
        assert {k: marker[3][k] for k in ("kind", "group_name", "decision_id", "route")} == {
            "kind": "decision",
            "group_name": "allocation",
            "decision_id": decision.id,
            "route": decision.route,
        }
        assert (marker[3]["sku"], marker[3]["summary"]) == (decision.sku, decision.summary)
        assert tables(self.mimic_engine) == tables(self.legacy_engine)


def tables(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The shop's rows, times left out."""
    found = {}
    with engine.connect() as conn:
        for table, key in SHOP_TABLES.items():
            rows = conn.execute(text(f"SELECT * FROM {table} ORDER BY {key}")).mappings()
            found[table] = [
                {k: v for k, v in row.items() if k not in ("created_at", "allocated_at")}
                for row in rows
            ]
    return found


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    urls = [f"sqlite:///{tmp_path / name}.db" for name in ("legacy", "mimic")]
    for url in urls:
        legacy_database(url)
    legacy_engine, mimic_engine = (engine_for(url) for url in urls)
    install_tables(mimic_engine, QUEUE)
    writer = Writer(mimic_engine, LEGACY_SHOP, QUEUE)
    legacy, mimic = (legacy_shop.create_app(url).test_client() for url in urls)
    yield Twins(legacy, mimic, legacy_engine, mimic_engine, writer)
    legacy_engine.dispose()
    mimic_engine.dispose()
    writer.engine.dispose()


def batch(ref: str, sku: str, qty: int, eta: str | None = None) -> dict[str, Any]:
    return {"ref": ref, "sku": sku, "qty": qty, "eta": eta}


def line(orderid: str, sku: str, qty: int) -> dict[str, Any]:
    return {"orderid": orderid, "sku": sku, "qty": qty}


# -- POST /batches ---------------------------------------------------------------------


def test_a_batch_of_a_new_sku_writes_its_product_row_then_its_lot(twins: Twins) -> None:
    twins.legacy_does("POST", "/batches", batch("b1", "LAMP", 10, "2030-01-02"))

    decision = twins.backsync_writes(
        ADD_BATCH, "LAMP", "created", [("BatchCreated", batch("b1", "LAMP", 10, "2030-01-02"))]
    )

    twins.assert_same_rows(decision)
    assert [(t, op) for t, op, _, _ in twins.legacy_changes or []] == [
        ("prod_catalog", "c"),
        ("stock_lot", "c"),
    ]


def test_a_batch_of_a_known_sku_writes_only_its_lot(twins: Twins) -> None:
    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    twins.legacy_does("POST", "/batches", batch("b2", "LAMP", 5))

    decision = twins.backsync_writes(
        ADD_BATCH, "LAMP", "created", [("BatchCreated", batch("b2", "LAMP", 5))]
    )

    twins.assert_same_rows(decision)
    assert [(t, op) for t, op, _, _ in twins.legacy_changes or []] == [("stock_lot", "c")]


# -- POST /allocate ----------------------------------------------------------------------


def test_an_allocation_inserts_the_order_line_and_its_allocation(twins: Twins) -> None:
    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    chosen = twins.legacy_does("POST", "/allocate", line("o1", "LAMP", 3))["batchref"]

    decision = twins.backsync_writes(
        ALLOCATE,
        "LAMP",
        f"allocated to {chosen}",
        [("Allocated", {**line("o1", "LAMP", 3), "batchref": chosen})],
    )

    twins.assert_same_rows(decision)
    assert [(t, op) for t, op, _, _ in twins.legacy_changes or []] == [
        ("cust_order_line", "c"),
        ("lot_allocation", "c"),
    ]


def test_an_allocation_of_an_unallocated_line_updates_its_quantity(twins: Twins) -> None:
    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    twins.history("POST", "/allocate", line("o1", "LAMP", 8))
    twins.history("PATCH", "/batches/b1", {"qty": 5})  # o1's line stays, unallocated
    twins.history("POST", "/batches", batch("b2", "LAMP", 5, "2030-01-01"))
    chosen = twins.legacy_does("POST", "/allocate", line("o1", "LAMP", 4))["batchref"]

    decision = twins.backsync_writes(
        ALLOCATE,
        "LAMP",
        f"allocated to {chosen}",
        [("Allocated", {**line("o1", "LAMP", 4), "batchref": chosen})],
    )

    twins.assert_same_rows(decision)
    assert [(t, op) for t, op, _, _ in twins.legacy_changes or []] == [
        ("cust_order_line", "u"),
        ("lot_allocation", "c"),
    ]


# -- POST /deallocate ------------------------------------------------------------------


def test_a_deallocation_deletes_the_allocation_then_the_line(twins: Twins) -> None:
    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    twins.history("POST", "/allocate", line("o1", "LAMP", 3))
    twins.history("POST", "/allocate", line("o2", "LAMP", 3))
    twins.legacy_does("POST", "/deallocate", {"orderid": "o1", "sku": "LAMP"})

    decision = twins.backsync_writes(
        DEALLOCATE,
        "LAMP",
        "deallocated from b1",
        [("Deallocated", {"orderid": "o1", "sku": "LAMP", "batchref": "b1"})],
    )

    twins.assert_same_rows(decision)
    assert [(t, op) for t, op, _, _ in twins.legacy_changes or []] == [
        ("lot_allocation", "d"),
        ("cust_order_line", "d"),
    ]


# -- PATCH /batches/<ref> --------------------------------------------------------------


def quantity_events(ref: str, sku: str, qty: int, moved: dict[str, Any]) -> list[Any]:
    """What the new system raises for a quantity cut that moves the lines of ``moved``
    (order -> (its qty, the batch it went to or None)); the Deallocated events here come
    oldest first, not in legacy's order: back-sync deletes newest first all the same."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("BatchQuantityChanged", {"ref": ref, "sku": sku, "qty": qty})
    ]
    for orderid in moved:
        events.append(("Deallocated", {"orderid": orderid, "sku": sku, "batchref": ref}))
    for orderid, (line_qty, to) in moved.items():
        if to is not None:
            events.append(("Allocated", {**line(orderid, sku, line_qty), "batchref": to}))
    return events


def summary_of(moved: dict[str, Any]) -> str:
    return "; ".join(f"{o} -> {to or 'unallocated'}" for o, (_, to) in sorted(moved.items()))


def test_a_quantity_cut_moves_the_newest_lines_and_keeps_unallocated_ones(twins: Twins) -> None:
    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    twins.history("POST", "/batches", batch("b2", "LAMP", 5, "2030-01-01"))
    for orderid in ("o1", "o2", "o3", "o4"):
        twins.history("POST", "/allocate", line(orderid, "LAMP", 2))
    change = twins.legacy_does("PATCH", "/batches/b1", {"qty": 1})
    moved = {r["orderid"]: (2, r["batchref"]) for r in change["reallocated"]}
    moved |= {u["orderid"]: (2, None) for u in change["unallocated"]}
    assert len(change["reallocated"]) == 2 and len(change["unallocated"]) == 2  # both kinds
    moved = dict(sorted(moved.items()))

    decision = twins.backsync_writes(
        CHANGE_QUANTITY, "LAMP", summary_of(moved), quantity_events("b1", "LAMP", 1, moved)
    )

    twins.assert_same_rows(decision)
    assert [(t, op) for t, op, _, _ in twins.legacy_changes or []] == [
        ("stock_lot", "u"),
        *[("lot_allocation", "d")] * 4,
        *[("lot_allocation", "c")] * 2,
    ]


def test_a_quantity_change_that_moves_nothing_updates_the_lot_only(twins: Twins) -> None:
    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    twins.history("POST", "/allocate", line("o1", "LAMP", 2))
    twins.legacy_does("PATCH", "/batches/b1", {"qty": 20})

    decision = twins.backsync_writes(
        CHANGE_QUANTITY, "LAMP", "no line moved", quantity_events("b1", "LAMP", 20, {})
    )

    twins.assert_same_rows(decision)
    assert [(t, op) for t, op, _, _ in twins.legacy_changes or []] == [("stock_lot", "u")]


# -- position, redelivery, refusals, fences ------------------------------------------------


def position(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM strangler_backsync_position")).mappings().one()
    return dict(row)


def test_the_position_is_written_with_the_decision_and_a_redelivery_writes_nothing(
    twins: Twins,
) -> None:
    messages = decision_messages(
        ADD_BATCH, "LAMP", "created", [("BatchCreated", batch("b1", "LAMP", 10))]
    )
    decision = decision_of(messages)
    assert twins.writer.write_decision(decision).written
    mark = change_mark(twins.mimic_engine)

    again = twins.writer.write_decision(decision_of(messages))

    assert not again.written
    assert changes_since(twins.mimic_engine, mark) == []
    assert position(twins.mimic_engine)["decisions"] == 1
    assert position(twins.mimic_engine)["last_decision_id"] == decision.id
    with twins.mimic_engine.connect() as conn:
        applied = conn.execute(text("SELECT decision_id, kind FROM strangler_backsync_applied"))
        assert applied.all() == [(decision.id, "decision")]


@pytest.mark.parametrize(
    ("route", "events", "refusal"),
    [
        (
            ALLOCATE,
            [("Allocated", {**line("o1", "LAMP", 1), "batchref": "nope"})],
            "unknown batch nope",
        ),
        (
            ALLOCATE,
            [("Allocated", {**line("o1", "DESK", 1), "batchref": "b1"})],
            "unknown sku DESK",
        ),
        (
            DEALLOCATE,
            [("Deallocated", {"orderid": "o9", "sku": "LAMP", "batchref": "b1"})],
            "order o9 has no allocation",
        ),
        (ADD_BATCH, [("BatchCreated", batch("b1", "LAMP", 3))], "batch b1 already exists"),
        (
            CHANGE_QUANTITY,
            [("BatchQuantityChanged", {"ref": "b7", "sku": "LAMP", "qty": 3})],
            "no batch b7",
        ),
    ],
)
def test_a_decision_legacy_cannot_hold_is_refused_and_writes_nothing(
    twins: Twins, route: str, events: list[Any], refusal: str
) -> None:
    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    mark = change_mark(twins.mimic_engine)

    with pytest.raises(Refused, match=refusal):
        twins.writer.write_decision(decision_of(decision_messages(route, "LAMP", "x", events)))

    assert changes_since(twins.mimic_engine, mark) == []  # not even the marker


def test_a_decision_whose_events_do_not_fit_its_route_is_malformed(twins: Twins) -> None:
    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    events = [("Deallocated", {"orderid": "o1", "sku": "LAMP", "batchref": "b1"})]

    with pytest.raises(MalformedMessage, match="POST /allocate decision with events"):
        twins.writer.write_decision(decision_of(decision_messages(ALLOCATE, "LAMP", "x", events)))


def fence(message: Message) -> MoveMessage:
    parsed = parse(message)
    assert isinstance(parsed, MoveMessage)
    return parsed


def test_a_fence_is_a_marker_alone_in_its_transaction_and_written_once(twins: Twins) -> None:
    from datetime import UTC, datetime

    twins.history("POST", "/batches", batch("b1", "LAMP", 10))
    move = fence(move_message("canary 30", "legacy", 4, datetime.now(UTC)))
    mark = change_mark(twins.mimic_engine)

    assert twins.writer.write_fence(move).written
    assert not twins.writer.write_fence(move).written  # the same move redelivered

    [(table, op, _, marker)] = changes_since(twins.mimic_engine, mark)
    assert (table, op) == ("strangler_origin", "c")
    assert {k: marker[k] for k in ("kind", "group_name", "epoch", "decision_id")} == {
        "kind": "fence",
        "group_name": "allocation",
        "epoch": 4,
        "decision_id": None,
    }
    assert position(twins.mimic_engine)["fences"] == 1


def test_install_again_adds_the_lane_table_an_older_install_lacks(twins: Twins) -> None:
    """An install from before the lanes had their own rows: ``run`` finds the table
    missing (and refuses, naming it); installing again creates it and keeps the rest."""
    from backsync.install import missing_tables

    engine = twins.writer.engine
    messages = decision_messages(
        ADD_BATCH, "LAMP", "created", [("BatchCreated", batch("b1", "LAMP", 10))]
    )
    assert twins.writer.write_decision(decision_of(messages)).written
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE strangler_backsync_lane"))
    assert missing_tables(engine) == ["strangler_backsync_lane"]

    assert install_tables(engine, QUEUE).created == ("strangler_backsync_lane",)
    assert missing_tables(engine) == []
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT decisions FROM strangler_backsync_position")) == 1
