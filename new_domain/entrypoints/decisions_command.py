"""``strangler decisions``: decision parity per write route, and its differences."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from new_domain.adapters.database import create_engine
from new_domain.adapters.decisions import decision_counts, latest_differences
from new_domain.entrypoints.options import first_line, new_db_url_option, require_current_schema
from new_domain.ingest.decisions import WRITE_ROUTES
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
