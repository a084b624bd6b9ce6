"""The decision journal: each legacy decision kept with what the rules read, and judged
again by ``strangler decisions replay`` exactly as the consumer would judge it live."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select

from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.bootstrap import bootstrap
from new_domain.domain.model import TieBreak
from new_domain.entrypoints.decisions_command import decisions
from new_domain.entrypoints.journal_retention import JournalRetention
from new_domain.entrypoints.options import beside
from new_domain.ingest import apply_changes, parse_change
from new_domain.ingest.decisions import ADD_BATCH, ALLOCATE, CHANGE_QUANTITY, DEALLOCATE
from new_domain.ingest.journal import FILLER, JournalError, rejudge, restore
from new_domain.ingest.ports import Verdict
from tests.fakes import InMemoryUnitOfWork
from tests.integration.consumer_streams import LegacyShopStream, migrated_sqlite_url


def journaled(
    stream: LegacyShopStream, tie_break: TieBreak = TieBreak.CREATED
) -> InMemoryUnitOfWork:
    uow = InMemoryUnitOfWork()
    bus = bootstrap(uow=uow)
    changes = [parse_change(m.body, m.message_id) for m in stream.messages]
    for start in range(0, len(changes), 97):  # batches, as the consumer applies them
        apply_changes(bus, changes[start : start + 97], tie_break=tie_break, journal_decisions=True)
    return uow


def words(verdict: Verdict) -> tuple[str, str, bool, str, str]:
    return verdict.route, verdict.sku, verdict.agree, verdict.legacy, verdict.new


def busy_stream() -> LegacyShopStream:
    stream = LegacyShopStream(seed=5)
    stream.busy_day(2500, products=6, lots_per_product=4)
    return stream


def test_replayed_with_the_same_rules_every_decision_is_judged_as_it_was() -> None:
    uow = journaled(busy_stream())
    entries = uow.decisions.journal
    assert [v for v, _ in entries] == uow.decisions.verdicts  # one entry per verdict
    assert {v.route for v, _ in entries} == {ADD_BATCH, ALLOCATE, DEALLOCATE, CHANGE_QUANTITY}
    for verdict, text in entries:
        again = rejudge(text, TieBreak.CREATED)
        assert (again.route, again.sku, again.agree, again.legacy, again.new) == words(verdict)


def test_replayed_with_another_tie_break_it_finds_what_live_judging_would_have_found() -> None:
    stream = LegacyShopStream(seed=8)
    for sku in ("LAMP", "DESK"):  # equal etas: the tie-break decides
        stream.add_batch(f"{sku}-zz", sku, 30, "2027-03-01")
        stream.add_batch(f"{sku}-aa", sku, 30, "2027-03-01")
    for n in range(12):
        stream.allocate(f"o{n}", ("LAMP", "DESK")[n % 2], 4)
    journal = journaled(stream).decisions.journal
    live = journaled(stream, TieBreak.REFERENCE).decisions.verdicts

    replayed = [rejudge(text, TieBreak.REFERENCE) for _, text in journal]

    assert [(r.route, r.sku, r.agree, r.legacy, r.new) for r in replayed] == [
        words(v) for v in live
    ]
    assert any(not r.agree for r in replayed)
    assert all(v.agree for v, _ in journal)  # legacy's own rule agreed everywhere


def test_an_entry_holds_only_what_the_rules_read_and_restores_to_the_same_choices() -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    stream.add_batch("b2", "LAMP", 10, "2027-01-01")
    for n in range(4):
        stream.allocate(f"o{n}", "LAMP", 2)
    stream.allocate("o9", "LAMP", 3)
    entries = journaled(stream).decisions.journal
    verdict, text = entries[-1]
    state = json.loads(text)
    assert state["decision"] == {
        "kind": "allocate", "orderid": "o9", "sku": "LAMP", "qty": 3, "batchref": "b2",
    }  # fmt: skip
    # quantities of every batch, no line of other orders
    assert state["product"]["batches"] == [["b1", None, 10, 8, []], ["b2", "2027-01-01", 10, 0, []]]
    restored = restore(text)
    assert restored.product is not None
    assert [b.available_quantity for b in restored.product.batches] == [2, 10]
    assert verdict.agree and rejudge(text).new == "allocated to b2"


def test_a_quantity_cut_keeps_the_cut_batchs_lines_in_order() -> None:
    stream = LegacyShopStream()
    stream.add_batch("b1", "LAMP", 10, None)
    stream.add_batch("b2", "LAMP", 10, "2027-01-01")
    for n in range(4):
        stream.allocate(f"o{n}", "LAMP", 2)
    [b1] = [lot.lot_id for lot in stream.lots.values() if lot.ref == "b1"]
    stream.change_quantity(b1, 3)  # o3, o2 and o1 must move
    verdict, text = journaled(stream).decisions.journal[-1]
    assert verdict.route == CHANGE_QUANTITY and verdict.agree
    cut = json.loads(text)["product"]["batches"][0]
    assert cut[4] == [["o0", 2], ["o1", 2], ["o2", 2], ["o3", 2]]
    assert rejudge(text).new == verdict.new


def test_a_broken_entry_is_refused_with_a_reason() -> None:
    with pytest.raises(JournalError, match="version"):
        restore('{"version": 99}')
    with pytest.raises(JournalError, match="unreadable"):
        restore("not json")
    bad = {"version": 1, "decision": {"kind": "allocate", "orderid": "o", "sku": "S",
           "qty": 1, "batchref": "b"}, "product": {"sku": "S", "version": 1,
           "batches": [["b", None, 5, 1, [["o", 3]]]]}}  # fmt: skip
    with pytest.raises(JournalError, match="more than it has allocated"):
        restore(json.dumps(bad))
    assert FILLER.startswith("\x00")  # no legacy order id can be it


def test_replay_lists_the_verdicts_a_rule_change_would_flip_and_changes_nothing(
    tmp_path: Path,
) -> None:
    url = migrated_sqlite_url(tmp_path)
    stream = LegacyShopStream()
    stream.add_batch("ship-zz", "LAMP", 10, "2027-01-01")
    stream.add_batch("ship-aa", "LAMP", 10, "2027-01-01")
    stream.allocate("o1", "LAMP", 2)
    stream.allocate("o2", "LAMP", 2)
    bus = bootstrap(url)
    apply_changes(bus, [parse_change(m.body, m.message_id) for m in stream.messages],
                  journal_decisions=True)  # fmt: skip
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(orm.decision_journal).values(
            recorded_at=connection.scalar(select(orm.decision_journal.c.recorded_at).limit(1)),
            route=ALLOCATE, sku="LAMP", agreed=True, entry="{broken", change_id=None,
        ))  # fmt: skip
        before = connection.execute(select(orm.decision_journal)).all()

    same = CliRunner().invoke(decisions, ["replay"], env={"NEW_DB_URL": url})
    other = CliRunner().invoke(
        decisions, ["replay", "--tie-break", "reference"], env={"NEW_DB_URL": url}
    )

    assert same.exit_code == 0, same.output
    assert "replaying 5 journaled decisions with tie-break created" in same.output
    rows = {line.split()[0] + " " + line.split()[1]: line.split()[2:]
            for line in same.output.splitlines() if line.startswith("POST ")}  # fmt: skip
    assert rows["POST /allocate"] == ["100.00%", "2", "0", "0"]
    assert rows["POST /batches"] == ["100.00%", "2", "0", "0"]
    assert "unreadable journal entries: 1" in same.output
    assert other.exit_code == 0, other.output
    flipped = [line for line in other.output.splitlines() if line.startswith("POST /allocate")]
    assert flipped == [f"{'POST /allocate':<22} {'0.00%':>8} {2:>8} {2:>7} {2:>8}"]
    assert other.output.count("agreed then, differs now") == 2
    assert "legacy: allocated to ship-zz" in other.output
    assert "new:    allocated to ship-aa" in other.output
    with engine.connect() as connection:
        assert connection.execute(select(orm.decision_journal)).all() == before
    engine.dispose()


def test_prune_deletes_only_entries_older_than_asked_and_asks_first(tmp_path: Path) -> None:
    url = migrated_sqlite_url(tmp_path)
    engine = create_engine(url)
    now = datetime.now(UTC)
    ages = [90, 45, 31, 29, 1, 0]  # days, oldest first (ids grow with time)
    with engine.begin() as connection:
        for n, age in enumerate(ages):
            connection.execute(insert(orm.decision_journal).values(
                recorded_at=now - timedelta(days=age, minutes=n), route=ALLOCATE, sku="LAMP",
                agreed=True, entry="{}", change_id=f"c{n}",
            ))  # fmt: skip

    def kept() -> list[str]:
        with engine.connect() as connection:
            return list(connection.scalars(select(orm.decision_journal.c.change_id)))

    declined = CliRunner().invoke(
        decisions, ["prune", "--older-than", "30"], env={"NEW_DB_URL": url}, input="n\n"
    )
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert len(kept()) == len(ages)

    pruned = CliRunner().invoke(
        decisions, ["prune", "--older-than", "30", "--yes"], env={"NEW_DB_URL": url}
    )
    assert pruned.exit_code == 0, pruned.output
    assert "deleted 3 journaled decisions recorded before" in pruned.output
    assert pruned.output.strip().endswith("; 3 left")
    assert kept() == ["c3", "c4", "c5"]
    engine.dispose()


def test_the_consumers_retention_prunes_at_start_and_every_round(tmp_path: Path) -> None:
    url = migrated_sqlite_url(tmp_path)
    engine = create_engine(url)
    now = [datetime.now(UTC)]

    def journal(age_days: float, change_id: str) -> None:
        with engine.begin() as connection:
            connection.execute(insert(orm.decision_journal).values(
                recorded_at=now[0] - timedelta(days=age_days), route=ALLOCATE, sku="LAMP",
                agreed=True, entry="{}", change_id=change_id,
            ))  # fmt: skip

    def kept() -> list[str]:
        with engine.connect() as connection:
            return list(connection.scalars(select(orm.decision_journal.c.change_id)))

    for n, age in enumerate([40, 31, 29, 1]):
        journal(age, f"c{n}")
    retention = JournalRetention(engine, days=30, clock=lambda: now[0])
    stop = threading.Event()
    with beside(retention.run, stop, "journal-retention"):  # the first round runs at once
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while retention.pruned < 2 and datetime.now(UTC) < deadline:
            stop.wait(0.01)
    assert stop.is_set() and kept() == ["c2", "c3"]
    now[0] += timedelta(days=2)  # c2 is 31 days old now
    assert retention.run_once() == 1 and kept() == ["c3"]
    assert retention.run_once() == 0
    with pytest.raises(ValueError):
        JournalRetention(engine, days=0)
    engine.dispose()


def test_prune_refuses_a_missing_or_silly_age_in_one_line(tmp_path: Path) -> None:
    url = migrated_sqlite_url(tmp_path)
    for args in (["prune"], ["prune", "--older-than", "0"], ["prune", "--older-than", "x"]):
        result = CliRunner().invoke(decisions, args, env={"NEW_DB_URL": url})
        assert result.exit_code == 2, result.output
        assert "--older-than" in result.output
