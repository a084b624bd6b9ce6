"""``strangler verify``: the reconciliation check, the cutover gate of the runbooks."""

from __future__ import annotations

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
    help="Base URL of the legacy system's HTTP API [env LEGACY_URL].",
)
@click.option(
    "--legacy-db-url",
    envvar="LEGACY_DB_URL",
    required=True,
    help="SQLAlchemy URL of the legacy database, read only [env LEGACY_DB_URL].",
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
    new system's; exit non-zero on any difference."""
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
    click.echo(report.summary())
    for difference in report.differences:
        click.echo(f"  {difference.orderid} ({difference.outcome}): {difference.explain()}")
    if not report.ok:
        raise click.ClickException(
            f"{report.checked - report.matching} of {report.checked} orders differ"
        )
