"""``strangler decisions``: decision parity per write route, and its differences."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from new_domain.adapters.database import create_engine, safe_url
from new_domain.adapters.decisions import (
    JournalRow,
    decision_counts,
    journal_rows,
    journal_size,
    latest_differences,
    prune_journal,
)
from new_domain.domain.model import TieBreak
from new_domain.entrypoints.options import first_line, new_db_url_option, require_current_schema
from new_domain.ingest.decisions import WRITE_ROUTES
from new_domain.ingest.journal import JournalError, Rejudged, rejudge
from new_domain.ingest.ports import UNCLASSIFIED, DecisionCount


@click.group()
def decisions() -> None:
    """Decision parity: legacy's write decisions judged against the new rules."""


@decisions.command("list")
@new_db_url_option
@click.option("--route", default=None, help="Only this write route, e.g. 'POST /allocate'.")
@click.option(
    "--limit",
    type=click.IntRange(0, 10_000),
    default=10,
    show_default=True,
    help="How many of the newest differences to show.",
)
def list_decisions(new_db_url: str, route: str | None, limit: int) -> None:
    """Agree/differ counts per write route, then the newest differences with both
    decisions and the product's state as the new rules saw it."""
    require_current_schema(new_db_url)
    engine = create_engine(new_db_url)
    try:
        with engine.connect() as connection:
            counts = {c.route: c for c in decision_counts(connection)}
            differences = latest_differences(connection, limit, route)
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot read the new database: {first_line(error)}") from error
    finally:
        engine.dispose()
    click.echo(f"{'ROUTE':<22} {'PARITY':>8} {'SAMPLES':>8} {'DIFFER':>7}")
    for name in (*WRITE_ROUTES, *sorted(set(counts) - {*WRITE_ROUTES, UNCLASSIFIED})):
        if route is None or name == route:
            count = counts.get(name, DecisionCount(name, 0, 0))
            click.echo(f"{name:<22} {percent(count):>8} {count.samples:>8} {count.differ:>7}")
    unclassified = counts.get(UNCLASSIFIED, DecisionCount(UNCLASSIFIED, 0, 0)).differ
    click.echo(f"unclassified legacy transactions: {unclassified}")
    for d in differences:
        when = d.recorded_at.isoformat(timespec="seconds")
        click.echo(f"\n{when}  {d.route}  {d.sku}  change {d.change_id or '-'}")
        click.echo(f"  legacy: {_shown(d.legacy)}")
        click.echo(f"  new:    {_shown(d.new)}")
        click.echo(f"  state:  {_shown(d.state)}")


def percent(count: DecisionCount) -> str:
    return f"{100.0 * count.agree / count.samples:.2f}%" if count.samples else "-"


def _shown(text: str) -> str:
    """Stored text on one line, control characters escaped (no forged output lines)."""
    return text.encode("unicode_escape").decode("ascii")


CHUNK = 1000


@dataclass
class _Tally:
    """Replay's counts per route, and the decisions whose verdict changed."""

    journaled: Counter[str] = field(default_factory=Counter)
    agree: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    shown: list[tuple[JournalRow, Rejudged]] = field(default_factory=list)

    def add(self, row: JournalRow, verdict: Rejudged, show: int) -> None:
        self.journaled[verdict.route] += 1
        self.agree[verdict.route] += verdict.agree
        if verdict.agree != row.agreed:
            self.changed[verdict.route] += 1
            if len(self.shown) < show:
                self.shown.append((row, verdict))


@decisions.command("replay")
@new_db_url_option
@click.option("--route", default=None, help="Only this write route, e.g. 'POST /allocate'.")
@click.option(
    "--tie-break",
    type=click.Choice([t.value for t in TieBreak]),
    default=TieBreak.CREATED.value,
    show_default=True,
    help="The order between batches of equal eta to judge with.",
)
@click.option(
    "--show",
    type=click.IntRange(0, 10_000),
    default=10,
    show_default=True,
    help="How many decisions whose verdict changed to show.",
)
def replay(new_db_url: str, route: str | None, tie_break: str, show: int) -> None:
    """Judge every journaled legacy decision again with these rules (`strangler consume
    --journal-decisions` keeps the journal), without changing anything; list the
    decisions whose verdict changed since they were recorded."""
    require_current_schema(new_db_url)
    rule, tally = TieBreak(tie_break), _Tally()
    engine = create_engine(new_db_url)
    try:
        with engine.connect() as connection:
            total = journal_size(connection, route)
        click.echo(f"replaying {total} journaled decisions with tie-break {rule.value}")
        with click.progressbar(length=total, label="replaying", file=sys.stderr) as bar:
            for rows in _chunks(engine, route):
                for row in rows:
                    try:
                        tally.add(row, rejudge(row.entry, rule), show)
                    except JournalError:
                        tally.unreadable += 1
                bar.update(len(rows))
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot read the new database: {first_line(error)}") from error
    finally:
        engine.dispose()
    _report(tally, route)


def _chunks(engine: Engine, route: str | None) -> Iterator[list[JournalRow]]:
    """The journal, oldest first, a short read per chunk (the consumer goes on writing)."""
    after = 0
    while True:
        with engine.connect() as connection:
            rows = journal_rows(connection, after, CHUNK, route)
        if not rows:
            return
        yield rows
        after = rows[-1].id


def _report(tally: _Tally, route: str | None) -> None:
    click.echo(f"{'ROUTE':<22} {'PARITY':>8} {'SAMPLES':>8} {'DIFFER':>7} {'CHANGED':>8}")
    for name in (*WRITE_ROUTES, *sorted(set(tally.journaled) - set(WRITE_ROUTES))):
        if route is None or name == route:
            samples, agree = tally.journaled[name], tally.agree[name]
            count = DecisionCount(name, agree, samples - agree)
            line = f"{name:<22} {percent(count):>8} {samples:>8} {samples - agree:>7}"
            click.echo(f"{line} {tally.changed[name]:>8}")
    if tally.unreadable:
        click.echo(f"unreadable journal entries: {tally.unreadable}")
    for row, verdict in tally.shown:
        when = row.recorded_at.isoformat(timespec="seconds")
        then = "agreed" if row.agreed else "differed"
        now = "agrees" if verdict.agree else "differs"
        click.echo(f"\n{when}  {verdict.route}  {verdict.sku}  change {row.change_id or '-'}")
        click.echo(f"  {then} then, {now} now")
        click.echo(f"  legacy: {_shown(verdict.legacy)}")
        click.echo(f"  new:    {_shown(verdict.new)}")
        if verdict.state:
            click.echo(f"  state:  {_shown(verdict.state)}")


@decisions.command("prune")
@new_db_url_option
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(1, 36_500),
    required=True,
    help="Delete the journaled decisions recorded more than this many days ago.",
)
@click.option("--yes", is_flag=True, help="Do not ask before deleting.")
def prune(new_db_url: str, days: int, yes: bool) -> None:
    """Delete old entries of the decision journal (`strangler consume
    --journal-decisions` adds one per legacy decision, and deletes those older than its
    --journal-retention-days, 30 by default). Decision parity's counts and differences
    are kept; only `decisions replay` sees less."""
    require_current_schema(new_db_url)
    before = datetime.now(UTC) - timedelta(days=days)
    when = before.isoformat(timespec="seconds")
    if not yes:
        click.confirm(
            f"Delete the journaled decisions recorded before {when} in {safe_url(new_db_url)}?",
            abort=True,
        )
    engine = create_engine(new_db_url, for_writes=True)
    try:
        deleted = prune_journal(engine, before)
        with engine.connect() as connection:
            left = journal_size(connection)
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot prune the journal: {first_line(error)}") from error
    finally:
        engine.dispose()
    click.echo(f"deleted {deleted} journaled decisions recorded before {when}; {left} left")
