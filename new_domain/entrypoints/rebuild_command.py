"""``strangler rebuild``: rebuild the read model, or reset for a fresh snapshot."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from new_domain.adapters import orm
from new_domain.adapters.database import create_engine, safe_url
from new_domain.adapters.rebuild import count_products, rebuild_read_model, reset_for_snapshot
from new_domain.entrypoints.options import first_line, new_db_url_option, require_current_schema


@click.command()
@new_db_url_option
@click.option(
    "--from-snapshot",
    is_flag=True,
    help="Reset ALL new-domain state so that a fresh bridge snapshot rebuilds it.",
)
@click.option("--yes", is_flag=True, help="Do not ask before --from-snapshot deletes state.")
def rebuild(new_db_url: str, from_snapshot: bool, yes: bool) -> None:
    """Rebuild the read model from the new domain's own write model.

    With --from-snapshot, empty the new domain instead (products, batches,
    allocations, read model, legacy key maps, anomalies, dead letters) and make the
    consumer skip changes until the bridge's next snapshot arrives, which rebuilds
    everything from legacy's current rows.
    """
    from tqdm import tqdm

    require_current_schema(new_db_url)
    engine = create_engine(new_db_url, for_writes=True)
    try:
        if from_snapshot:
            if not yes:
                click.confirm(f"Delete all new-domain state in {safe_url(new_db_url)}?", abort=True)
            tables = orm.NEW_DOMAIN_STATE
            with tqdm(total=len(tables), unit="table", desc="reset") as bar:
                streams = reset_for_snapshot(engine, bar.update)
            click.echo(
                f"new domain reset; {len(streams)} stream(s) await a snapshot: "
                "take a fresh snapshot with the bridge and the consumer rebuilds from it"
            )
            return
        with tqdm(total=count_products(engine), unit="product", desc="read model") as bar:
            rows = rebuild_read_model(engine, bar.update)
        click.echo(f"read model rebuilt from the write model: {rows} allocation(s)")
    except SQLAlchemyError as error:
        raise click.ClickException(f"rebuild failed: {first_line(error)}") from error
    finally:
        engine.dispose()
