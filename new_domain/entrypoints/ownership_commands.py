"""``strangler ownership``: ownership violations and echo anomalies, listed and resolved.

The consumer records an **ownership violation** for every legacy change, not an echo, to
a product the new system owns (not applied), and an **echo anomaly** for every echo
whose legacy rows show another decision than the new system's (docs/write-path.md).
They stay unresolved, failing the write group's gate, until an operator has looked
(``strangler verify`` shows the difference) and resolves them, saying who and why.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import click
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from new_domain.adapters.database import create_engine
from new_domain.adapters.ownership_records import (
    ECHO_ANOMALY,
    VIOLATION,
    AlreadyResolved,
    EchoAnomaly,
    OwnershipViolation,
    UnknownProblem,
    list_echo_anomalies,
    list_violations,
    resolve_problem,
    unresolved_counts,
)
from new_domain.entrypoints.options import first_line, new_db_url_option, require_current_schema

T = TypeVar("T")

_limit = click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="How many to show, oldest first.",
)
_all = click.option("--all", "everything", is_flag=True, help="Resolved ones too.")


@click.group()
def ownership() -> None:
    """Write ownership: violations of it and echo anomalies; resolve them."""


@ownership.command("violations")
@new_db_url_option
@_all
@_limit
def violations(new_db_url: str, everything: bool, limit: int) -> None:
    """Legacy changes to products the new system owns (recorded, not applied)."""
    rows, counts = _read(new_db_url, lambda c: list_violations(c, limit, resolved=everything))
    for v in rows:
        click.echo(
            f"#{v.id}  {_when(v.recorded_at)}  {v.group_name}  {_shown(v.sku)}  change"
            f" {_shown(v.change_id or '-')} ({_shown(v.stream or '-')} @ {v.position})"
        )
        click.echo(f"  {_shown(v.detail)}")
        _resolution(v)
    click.echo(f"{counts[VIOLATION]} unresolved ownership violation(s)")


@ownership.command("anomalies")
@new_db_url_option
@_all
@_limit
def anomalies(new_db_url: str, everything: bool, limit: int) -> None:
    """Echoes whose legacy rows show another decision than the new system took."""
    rows, counts = _read(new_db_url, lambda c: list_echo_anomalies(c, limit, resolved=everything))
    for a in rows:
        click.echo(
            f"#{a.id}  {_when(a.recorded_at)}  decision {_shown(a.decision_id or '-')}"
            f"  {_shown(a.sku or '-')}  change {_shown(a.change_id or '-')}"
        )
        click.echo(f"  expected: {_shown(a.expected)}")
        click.echo(f"  found:    {_shown(a.found)}")
        _resolution(a)
    click.echo(f"{counts[ECHO_ANOMALY]} unresolved echo anomaly(ies)")


@ownership.command("resolve")
@new_db_url_option
@click.argument("kind", type=click.Choice([VIOLATION, ECHO_ANOMALY]))
@click.argument("problem_id", metavar="ID", type=click.IntRange(1))
@click.option("--by", required=True, help="Who resolves it.")
@click.option("--reason", required=True, help="Why it is resolved (what was done).")
def resolve(new_db_url: str, kind: str, problem_id: int, by: str, reason: str) -> None:
    """Mark ownership violation (or echo anomaly) ID resolved, by whom and why."""
    if not by.strip() or not reason.strip():
        raise click.ClickException("--by and --reason must not be empty")
    require_current_schema(new_db_url)
    engine = create_engine(new_db_url, for_writes=True)
    try:
        with engine.begin() as connection:
            at = resolve_problem(connection, kind, problem_id, by.strip(), reason.strip())
    except (UnknownProblem, AlreadyResolved) as error:
        raise click.ClickException(str(error)) from error
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot write the new database: {first_line(error)}") from error
    finally:
        engine.dispose()
    name = "ownership violation" if kind == VIOLATION else "echo anomaly"
    click.echo(f"{name} {problem_id} resolved at {_when(at)} by {_shown(by.strip())}")


def _read(
    new_db_url: str, query: Callable[[Connection], list[T]]
) -> tuple[list[T], dict[str, int]]:
    """What ``query`` reads, and the unresolved counts."""
    require_current_schema(new_db_url)
    engine = create_engine(new_db_url)
    try:
        with engine.connect() as connection:
            rows = query(connection)
            counts = unresolved_counts(connection)
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot read the new database: {first_line(error)}") from error
    finally:
        engine.dispose()
    return rows, counts


def _resolution(problem: OwnershipViolation | EchoAnomaly) -> None:
    if problem.resolved_at is not None:
        click.echo(
            f"  resolved {_when(problem.resolved_at)} by {_shown(problem.resolved_by or '-')}:"
            f" {_shown(problem.resolution or '-')}"
        )


def _when(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def _shown(text: str) -> str:
    """Stored text on one line, control characters escaped (no forged output lines)."""
    return text.encode("unicode_escape").decode("ascii")
