"""``strangler verify``: the reconciliation check, the cutover gate of the runbooks."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from new_domain.adapters.database import safe_url
from new_domain.entrypoints.options import first_line, new_db_url_option, require_current_schema
from new_domain.views import open_read_model


@click.command()
@click.option(
    "--legacy-url",
    envvar="LEGACY_URL",
    required=True,
    help="Base URL of the legacy system's HTTP API (env LEGACY_URL).",
)
@click.option(
    "--legacy-db-url",
    envvar="LEGACY_DB_URL",
    required=True,
    help="SQLAlchemy URL of the legacy database, read only (env LEGACY_DB_URL).",
)
@new_db_url_option
@click.option(
    "--legacy-orders-sql",
    default=None,
    help="Query listing legacy's order ids (first column), run read-only "
    "[default: SELECT DISTINCT order_no FROM cust_order_line].",
)
@click.option(
    "--sample",
    type=click.IntRange(1, None),
    default=None,
    help="Check a random sample of this many orders instead of all.",
)
@click.option("--seed", type=int, default=None, help="Seed of the random sample.")
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--show", default=10, show_default=True, type=click.IntRange(0, 1000), help="Differences shown."
)
def verify(
    legacy_url: str,
    legacy_db_url: str,
    new_db_url: str,
    legacy_orders_sql: str | None,
    sample: int | None,
    seed: int | None,
    workers: int,
    show: int,
) -> None:
    """Compare, order by order, legacy's answer to GET /allocations/<orderid> with the
    new system's.

    \b
    Exit status:
      0  every order matches
      1  some orders differ (or a database could not be read)
      2  usage error
      3  legacy could not be asked (down, refused, timed out): nothing is known
         about those orders
    """
    # imported here: HTTP and diffing are not needed by the other commands
    from new_domain.reconciliation import (
        DEFAULT_LEGACY_ORDERS_SQL,
        LegacyClient,
        choose,
        legacy_orderids,
        new_answers,
        reconcile,
    )

    require_current_schema(new_db_url)
    try:
        from_legacy = legacy_orderids(legacy_db_url, legacy_orders_sql or DEFAULT_LEGACY_ORDERS_SQL)
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"cannot list orders in {safe_url(legacy_db_url)}: {first_line(error)}"
        ) from error
    with open_read_model(new_db_url) as read_model:
        try:
            orderids = choose(from_legacy | set(read_model.orderids()), sample, seed)
            report = reconcile(
                orderids,
                LegacyClient(legacy_url, workers).answers,
                lambda ids: new_answers(read_model, ids),
                keep=show,
            )
        except SQLAlchemyError as error:
            raise click.ClickException(
                f"cannot read the new database: {first_line(error)}"
            ) from error
    _tell(report, legacy_url)


def _tell(report: Any, legacy_url: str) -> None:
    """Print the reconciliation's report; raise what its exit status says."""
    click.echo(report.summary())
    for difference in report.differences:
        click.echo(f"  {difference.orderid} ({difference.outcome}): {difference.explain()}")
    if report.unasked:
        raise LegacyUnreachable(
            f"legacy at {legacy_url} could not be asked about {report.unasked} of "
            f"{report.checked} orders ({first_line_of(report.unasked_reason)}): "
            "they are not verified"
        )
    if not report.ok:
        raise click.ClickException(
            f"{report.checked - report.matching} of {report.checked} orders differ"
        )


LEGACY_UNREACHABLE_EXIT = 3
"""``strangler verify``'s exit status when legacy could not be asked."""


class LegacyUnreachable(click.ClickException):
    exit_code = LEGACY_UNREACHABLE_EXIT


def first_line_of(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:200] if lines else "no answer"
