"""`strangler ownership`: the violations and echo anomalies the consumer recorded (SQL
adapters on SQLite), listed, and resolved by someone for a reason; failures are one
line and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from new_domain import bootstrap
from new_domain.adapters.database import create_engine
from new_domain.adapters.ownership import move_ownership
from new_domain.entrypoints.commands import ownership
from new_domain.ingest import apply_changes, parse_change
from new_domain.ingest.decisions import ALLOCATE
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url


@pytest.fixture
def new_db_url(tmp_path: Path) -> Iterator[str]:
    """A new database where legacy wrote on its own (two violations: an order line and
    its allocation) and an echo showed another decision than the new system's."""
    url = migrated_sqlite_url(tmp_path)
    uow = SqlAlchemyUnitOfWork(create_engine(url, for_writes=True))
    bus = bootstrap(uow=uow)
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    apply_changes(bus, [parse_change(m.body, m.message_id) for m in stream.messages])
    with uow.engine.begin() as connection:
        move_ownership(connection, "allocation", "new", "alice")
    sent = len(stream.messages)
    stream.fence(1)
    stream.allocate("o1", "LAMP", 2)
    with stream.echo(ALLOCATE, "allocated to b9", "LAMP", decision_id="d-9"):
        stream.allocate("o2", "LAMP", 1)
    apply_changes(bus, [parse_change(m.body, m.message_id) for m in stream.messages[sent:]])
    uow.close()
    yield url


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(ownership, list(args), env={"NEW_DB_URL": url})


def test_violations_and_anomalies_are_listed_oldest_first(new_db_url: str) -> None:
    listed = run(new_db_url, "violations")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].startswith("#1 ") and "allocation  LAMP  change" in lines[0]
    assert "legacy inserted a cust_order_line row of LAMP" in lines[1]
    assert "lot_allocation" in lines[3]
    assert lines[-1] == "2 unresolved ownership violation(s)"

    anomalies = run(new_db_url, "anomalies")
    assert anomalies.exit_code == 0, anomalies.output
    assert "decision d-9  LAMP" in anomalies.output
    assert "expected: POST /allocate: allocated to b9" in anomalies.output
    assert "found:    POST /allocate: allocated to b1" in anomalies.output


def test_resolving_says_who_and_why_and_happens_once(new_db_url: str) -> None:
    done = run(new_db_url, "resolve", "anomaly", "1", "--by", "bob", "--reason", "re-synced")
    assert done.exit_code == 0, done.output
    assert done.output.startswith("echo anomaly 1 resolved at ") and "by bob" in done.output
    assert run(new_db_url, "anomalies").output == "0 unresolved echo anomaly(ies)\n"
    assert "by bob: re-synced" in run(new_db_url, "anomalies", "--all").output

    again = run(new_db_url, "resolve", "anomaly", "1", "--by", "bob", "--reason", "twice")
    assert again.exit_code == 1
    assert again.output.count("\n") == 1 and "echo anomaly 1 was resolved at" in again.output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["violation", "99", "--by", "bob", "--reason", "x"], "no ownership violation 99"),
        (["violation", "1", "--by", " ", "--reason", "x"], "--by and --reason must not be empty"),
    ],
)
def test_a_resolve_that_cannot_be_done_fails_in_one_line(
    new_db_url: str, args: list[str], error: str
) -> None:
    failed = run(new_db_url, "resolve", *args)
    assert failed.exit_code == 1
    assert failed.output == f"Error: {error}\n"
    assert run(new_db_url, "violations").output.endswith("2 unresolved ownership violation(s)\n")
