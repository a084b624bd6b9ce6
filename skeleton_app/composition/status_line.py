"""``strangler status`` with back-sync's line (when the legacy database is given).

The new domain's ``status`` reports the pipeline into the new database; back-sync writes
the other way, into the legacy database, so its line is added here, where both are
known: decisions and fences written, the last decision's lag and back-sync's queue.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from backsync import QUEUE, backsync_status
from legacy_bridge import BridgeError, BridgeNotInstalled, bridge_status, engine_slots


def status_with_backsync(status: click.Command) -> click.Command:
    """``status`` (the new domain's command) followed by the bridge's line (relay running,
    pending changes, snapshot progress) and back-sync's when ``--legacy-db-url`` (or
    ``LEGACY_DB_URL``) is given."""
    params = [copy.copy(param) for param in status.params]
    params.append(
        click.Option(
            ["--legacy-db-url"],
            envvar="LEGACY_DB_URL",
            default=None,
            help="SQLAlchemy URL of the legacy database: adds back-sync's line "
            "(env LEGACY_DB_URL).",
        )
    )
    params.append(
        click.Option(
            ["--backsync-queue"], default=QUEUE, show_default=True, help="Back-sync's queue."
        )
    )

    def run(legacy_db_url: str | None, backsync_queue: str, **options: Any) -> None:
        failure: click.ClickException | None = None
        try:
            click.get_current_context().invoke(status, **options)
        except click.ClickException as error:
            failure = error
        if legacy_db_url is not None:
            click.echo(f"bridge          {_bridge_line(legacy_db_url)}")
            broker_url = None if failure else options.get("broker_url")
            try:
                line = backsync_status(legacy_db_url, broker_url, backsync_queue).line()
            except click.ClickException as error:
                line = f"unknown ({error.format_message()})"
                failure = failure or error
            click.echo(f"back-sync       {line}")
        if failure is not None:
            raise failure

    return click.Command(
        status.name,
        params=params,
        callback=run,
        help=inspect.cleandoc(status.help or "")
        + "\n\nWith --legacy-db-url (or LEGACY_DB_URL): the bridge's relay, pending changes "
        "and snapshot progress, and back-sync's decisions, fences, lag and queue too.",
        short_help=status.short_help,
    )


def _bridge_line(legacy_db_url: str) -> str:
    """The relay, what it has still to publish, and each snapshot's progress."""
    try:
        found = bridge_status(legacy_db_url)
    except BridgeNotInstalled as error:
        engine = _engine_line(legacy_db_url)
        return engine or f"unknown ({_first_line(error)})"
    except (BridgeError, SQLAlchemyError) as error:
        return f"unknown ({_first_line(error)})"
    return (
        f"relay {found.relay_line()}; {found.pending} change(s) pending; "
        f"snapshot: {found.snapshot_line()}"
    )


def _engine_line(legacy_db_url: str) -> str | None:
    """Log-based capture (``bridge run --engine debezium``): its slots, or None."""
    try:
        slots = engine_slots(legacy_db_url)
    except (BridgeError, SQLAlchemyError) as error:
        return f"debezium engine: unknown ({_first_line(error)})"
    if not slots:
        return None
    return "; ".join(
        f"debezium engine, slot {s.slot!r} {'in use' if s.active else 'NOT in use'}, "
        f"confirmed {s.confirmed_flush_lsn or '-'}, WAL held "
        f"{'?' if s.retained_wal_bytes is None else s.retained_wal_bytes} bytes"
        for s in slots
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
