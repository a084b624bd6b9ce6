"""Decision parity on PostgreSQL: counts and differences stored with the effects,
exactly once across redeliveries, shown by `strangler decisions list` and the read
model."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from new_domain import bootstrap, open_read_model, upgrade_database
from new_domain.domain.model import TieBreak
from new_domain.entrypoints.commands import decisions
from new_domain.ingest import apply_changes, parse_change
from new_domain.ingest.decisions import ADD_BATCH, ALLOCATE
from skeleton_app import close_app, create_app
from skeleton_app.commands import routes
from skeleton_app.settings import FacadeSettings
from tests.integration.consumer_streams import LegacyShopStream
from tests.unit.test_decision_parity import applied, by_route

pytestmark = pytest.mark.postgres


def test_verdicts_are_stored_once_and_listed(pg_url: str) -> None:
    upgrade_database(pg_url)
    stream = LegacyShopStream(seed=5)
    stream.busy_day(400, products=4, lots_per_product=2)
    stream.add_batch("ship-zz", "TIE", 10, "2027-01-01")  # created first
    stream.add_batch("ship-aa", "TIE", 10, "2027-01-01")  # same eta, earlier reference
    stream.allocate("tie-order", "TIE", 1)
    changes = [parse_change(m.body, m.message_id) for m in stream.messages]
    bus = bootstrap(pg_url, tie_break=TieBreak.REFERENCE)
    try:
        for start in range(0, len(changes), 100):  # batches end where transactions end
            chunk = changes[start : start + 100]
            while chunk and not chunk[-1].ends_transaction:
                chunk = chunk[:-1]
            apply_changes(bus, changes[: start + len(chunk)], tie_break=TieBreak.REFERENCE)
        apply_changes(bus, changes, tie_break=TieBreak.REFERENCE)  # all redelivered
    finally:
        bus.uow.close()

    with open_read_model(pg_url) as read_model:
        parity = read_model.decision_parity()
    assert parity[ADD_BATCH].differ == 0 and parity[ADD_BATCH].agree > 2
    once = by_route(applied(stream, TieBreak.REFERENCE).decisions.verdicts)
    assert {r: (c.agree, c.differ) for r, c in parity.items()} == once  # judged once each
    assert parity[ALLOCATE].differ == 1  # the tie: legacy took ship-zz, REFERENCE ship-aa

    result = CliRunner().invoke(
        decisions, ["list", "--route", ALLOCATE], env={"NEW_DB_URL": pg_url}
    )
    assert result.exit_code == 0, result.output
    assert "legacy: allocated to ship-zz" in result.output
    assert "new:    allocated to ship-aa" in result.output
    header, row = result.output.splitlines()[:2]
    assert header.split()[:3] == ["ROUTE", "PARITY", "SAMPLES"]
    assert row.split()[:2] == ["POST", "/allocate"]

    listed = CliRunner().invoke(routes, ["list"], env={"NEW_DB_URL": pg_url})
    assert listed.exit_code == 0, listed.output
    [allocate_row] = [
        line for line in listed.output.splitlines() if line.startswith("POST /allocate")
    ]
    agree, differ = parity[ALLOCATE].agree, parity[ALLOCATE].differ
    assert allocate_row.split()[2:] == [
        f"{100.0 * agree / (agree + differ):.2f}%",
        str(agree + differ),
        str(differ),
    ]
    assert "unclassified legacy transactions: 0" in listed.output


def test_the_admin_api_lists_decision_parity_with_the_routes(pg_url: str) -> None:
    upgrade_database(pg_url)
    stream = LegacyShopStream(seed=5)
    stream.add_batch("b1", "LAMP", 10, None)
    stream.allocate("o1", "LAMP", 2)
    bus = bootstrap(pg_url)
    try:
        apply_changes(bus, [parse_change(m.body, m.message_id) for m in stream.messages])
    finally:
        bus.uow.close()
    app = create_app(
        "http://legacy.invalid", pg_url, settings=FacadeSettings(admin_token="t0ken-for-tests")
    )
    try:
        answer = app.test_client().get(
            "/_strangler/routes", headers={"Authorization": "Bearer t0ken-for-tests"}
        )
    finally:
        close_app(app)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    parity = answer.get_json()["decision_parity"]
    assert parity[ADD_BATCH] == {"agree": 1, "differ": 0, "samples": 1, "percent": 100.0}
    assert parity[ALLOCATE] == {"agree": 1, "differ": 0, "samples": 1, "percent": 100.0}


def test_the_journal_is_written_once_with_the_effects_and_replays(pg_url: str) -> None:
    upgrade_database(pg_url)
    stream = LegacyShopStream(seed=9)
    stream.busy_day(600, products=4, lots_per_product=3)
    changes = [parse_change(m.body, m.message_id) for m in stream.messages]
    bus = bootstrap(pg_url)
    try:
        apply_changes(bus, changes, journal_decisions=True)
        apply_changes(bus, changes, journal_decisions=True)  # redelivered: nothing twice
    finally:
        bus.uow.close()
    judged = sum(by_route(applied(stream).decisions.verdicts)[r][0] for r in (ADD_BATCH, ALLOCATE))

    result = CliRunner().invoke(decisions, ["replay"], env={"NEW_DB_URL": pg_url})

    assert result.exit_code == 0, result.output
    rows = {" ".join(line.split()[:2]): line.split()[2:] for line in result.output.splitlines()
            if line.startswith(("POST ", "PATCH "))}  # fmt: skip
    assert int(rows["POST /batches"][1]) + int(rows["POST /allocate"][1]) == judged
    assert all(row[0] == "100.00%" and row[3] == "0" for row in rows.values()), rows
