"""``strangler verify --databases``: the legacy database against the new one, both ways.

Whoever owns each product, both databases must hold the same facts: every order's
allocations (order id and sku -> batch reference) and every batch's product, eta,
purchased quantity and available quantity (purchased minus the allocated lines). Each
side is read in one read-only transaction; the comparison runs both ways (a row only one
side has is a difference). Without ``--databases``, ``strangler verify`` compares
legacy's HTTP answers with the read model's, as before.

The legacy side reads the legacy shop's tables, the new side the new domain's public
metadata (``new_domain.metadata``): this module wires both, so it lives in the
composition root.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import click
from sqlalchemy import column, create_engine, func, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

import new_domain

BatchFacts = tuple[str, date | None, int, int]
"""A batch's sku, eta, purchased and available quantity."""

# the legacy shop's tables, as far as the comparison reads them
_prod = table("prod_catalog", column("prod_id"), column("prod_code"))
_lot = table(
    "stock_lot",
    column("lot_id"),
    column("lot_ref"),
    column("prod_id"),
    column("qty_units"),
    column("arrival_date"),
)
_line = table(
    "cust_order_line", column("line_id"), column("order_no"), column("prod_id"), column("qty_units")
)
_alloc = table("lot_allocation", column("lot_id"), column("line_id"))


@dataclass(frozen=True)
class Difference:
    """One fact the databases disagree about."""

    what: str  # "batch" or "allocation"
    key: str
    legacy: str | None
    new: str | None

    def explain(self) -> str:
        if self.new is None:
            return f"{self.what} {self.key}: only in legacy ({self.legacy})"
        if self.legacy is None:
            return f"{self.what} {self.key}: only in the new system ({self.new})"
        return f"{self.what} {self.key}: legacy {self.legacy}, new system {self.new}"


@dataclass
class DatabaseReport:
    batches: int = 0
    allocations: int = 0
    count: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.count == 0

    def summary(self) -> str:
        verdict = "equal" if self.ok else f"{self.count} difference(s)"
        return (
            f"compared {self.batches} batches and {self.allocations} allocations in the "
            f"legacy and new databases: {verdict}"
        )


def compare_databases(legacy_db_url: str, new_db_url: str, keep: int = 10) -> DatabaseReport:
    """Compare both databases both ways; the first ``keep`` differences are kept."""
    with _read_only(legacy_db_url) as legacy:
        legacy_batches, legacy_allocations = _legacy_batches(legacy), _legacy_allocations(legacy)
    with _read_only(new_db_url) as new:
        new_batches, new_allocations = _new_batches(new), _new_allocations(new)
    report = DatabaseReport(
        batches=len(legacy_batches.keys() | new_batches.keys()),
        allocations=len(legacy_allocations.keys() | new_allocations.keys()),
    )
    for difference in (
        *_differ("batch", legacy_batches, new_batches, _batch_text),
        *_differ("allocation", legacy_allocations, new_allocations, str),
    ):
        report.count += 1
        if len(report.differences) < keep:
            report.differences.append(difference)
    return report


def _differ(
    what: str, legacy: Mapping[Any, Any], new: Mapping[Any, Any], text: Any
) -> Iterator[Difference]:
    for key in sorted(legacy.keys() | new.keys(), key=str):
        mine, theirs = legacy.get(key), new.get(key)
        if mine != theirs:
            shown = key if isinstance(key, str) else "/".join(key)
            yield Difference(
                what,
                shown,
                None if mine is None else text(mine),
                None if theirs is None else text(theirs),
            )


def _batch_text(facts: BatchFacts) -> str:
    sku, eta, purchased, available = facts
    when = eta.isoformat() if eta else "warehouse"
    return f"sku {sku}, eta {when}, purchased {purchased}, available {available}"


def _legacy_batches(conn: Connection) -> dict[str, BatchFacts]:
    allocated = func.coalesce(func.sum(_line.c.qty_units), 0)
    rows = conn.execute(
        select(_lot.c.lot_ref, _prod.c.prod_code, _lot.c.arrival_date, _lot.c.qty_units, allocated)
        .select_from(
            _lot.join(_prod, _prod.c.prod_id == _lot.c.prod_id)
            .outerjoin(_alloc, _alloc.c.lot_id == _lot.c.lot_id)
            .outerjoin(_line, _line.c.line_id == _alloc.c.line_id)
        )
        .group_by(_lot.c.lot_ref, _prod.c.prod_code, _lot.c.arrival_date, _lot.c.qty_units)
    )
    return {
        str(ref): (str(sku), _date(eta), int(qty), int(qty) - int(used))
        for ref, sku, eta, qty, used in rows
    }


def _legacy_allocations(conn: Connection) -> dict[tuple[str, str], str]:
    rows = conn.execute(
        select(_line.c.order_no, _prod.c.prod_code, _lot.c.lot_ref).select_from(
            _line.join(_alloc, _alloc.c.line_id == _line.c.line_id)
            .join(_lot, _lot.c.lot_id == _alloc.c.lot_id)
            .join(_prod, _prod.c.prod_id == _line.c.prod_id)
        )
    )
    return {(str(orderid), str(sku)): str(ref) for orderid, sku, ref in rows}


def _new_batches(conn: Connection) -> dict[str, BatchFacts]:
    batches = new_domain.metadata.tables["batches"]
    allocations = new_domain.metadata.tables["batch_allocations"]
    allocated = func.coalesce(func.sum(allocations.c.qty), 0)
    rows = conn.execute(
        select(
            batches.c.reference,
            batches.c.sku,
            batches.c.eta,
            batches.c.purchased_quantity,
            allocated,
        )
        .select_from(batches.outerjoin(allocations, allocations.c.batchref == batches.c.reference))
        .group_by(batches.c.reference, batches.c.sku, batches.c.eta, batches.c.purchased_quantity)
    )
    return {
        str(ref): (str(sku), _date(eta), int(qty), int(qty) - int(used))
        for ref, sku, eta, qty, used in rows
    }


def _new_allocations(conn: Connection) -> dict[tuple[str, str], str]:
    allocations = new_domain.metadata.tables["batch_allocations"]
    rows = conn.execute(select(allocations.c.orderid, allocations.c.sku, allocations.c.batchref))
    return {(str(orderid), str(sku)): str(ref) for orderid, sku, ref in rows}


def _date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])  # SQLite may hand back text


@contextmanager
def _read_only(url: str) -> Iterator[Connection]:
    """One read-only transaction (a consistent snapshot where the engine gives one)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            dialect = conn.dialect.name
            if dialect == "sqlite":
                conn.exec_driver_sql("PRAGMA query_only = ON")
            elif dialect == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            elif dialect in ("mysql", "mariadb"):
                conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
                conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            yield conn
            conn.rollback()
    finally:
        engine.dispose()


# -- the command -------------------------------------------------------------------------

HTTP_ONLY = ("legacy_url", "legacy_orders_sql", "sample", "seed", "workers")


def verify_with_databases(http_verify: click.Command) -> click.Command:
    """``strangler verify``: ``http_verify`` (the new domain's command) with
    ``--databases``, which compares the databases instead of HTTP answers."""
    params: list[click.Parameter] = []
    for param in http_verify.params:
        param = copy.copy(param)
        if param.name == "legacy_url":
            param.required = False  # not needed with --databases
        params.append(param)
    params.append(
        click.Option(
            ["--databases"],
            is_flag=True,
            help="Compare the legacy and new databases directly, both ways: every "
            "order's allocations and every batch's purchased and available quantity "
            "(needs --legacy-db-url and --new-db-url, not --legacy-url).",
        )
    )

    def verify(databases: bool, **options: Any) -> None:
        context = click.get_current_context()
        if not databases:
            if options.get("legacy_url") is None:
                raise click.UsageError("Missing option '--legacy-url' (or use --databases)")
            context.invoke(http_verify, **options)
            return
        given = [
            name
            for name in HTTP_ONLY
            if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise click.UsageError(f"{flag} applies to the HTTP comparison, not to --databases")
        _verify_databases(options["legacy_db_url"], options["new_db_url"], options["show"])

    return click.Command(
        http_verify.name,
        params=params,
        callback=verify,
        help=inspect.cleandoc(http_verify.help or "")
        + "\n\nWith --databases: compare the two databases directly instead (whoever owns "
        "each product), and exit non-zero on any difference.",
        short_help=http_verify.short_help,
    )


def _verify_databases(legacy_db_url: str, new_db_url: str, show: int) -> None:
    try:
        report = compare_databases(legacy_db_url, new_db_url, keep=show)
    except (ArgumentError, SQLAlchemyError) as error:
        lines = str(getattr(error, "orig", None) or error).strip().splitlines()
        raise click.ClickException(
            f"cannot compare the databases: {lines[0] if lines else type(error).__name__}"
        ) from error
    click.echo(report.summary())
    for difference in report.differences:
        click.echo(f"  {difference.explain()}")
    if report.count > len(report.differences):
        click.echo(f"  ... and {report.count - len(report.differences)} more")
    if not report.ok:
        raise click.ClickException(f"the databases differ in {report.count} fact(s)")
