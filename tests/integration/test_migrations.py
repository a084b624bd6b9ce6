"""The Alembic migrations build exactly the schema the code maps: every table the
revisions create belongs to the new domain's metadata or the facade's, and Alembic's
autogenerate comparison finds no difference with either."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Index, MetaData, String, Table, create_engine, inspect, text

import new_domain
import skeleton_app
from new_domain import upgrade_database
from new_domain.adapters.schema import alembic_config, pending_revisions

TARGET = (new_domain.metadata, skeleton_app.metadata)
"""Everything the revisions create: the migrations' target metadata."""
OWN_TABLES = {t.name for metadata in TARGET for t in metadata.sorted_tables}


def schema_differences(url: str, target: Sequence[MetaData] = TARGET) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_object": _own,
                },
            )
            return list(compare_metadata(context, list(target)))
    finally:
        engine.dispose()


def _own(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    return not (type_ == "table" and reflected and compare_to is None)


def check_upgrade_from_empty(url: str) -> None:
    current, heads = pending_revisions(url)
    assert current == set()
    upgrade_database(url)
    current, heads = pending_revisions(url)
    assert current == heads
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == OWN_TABLES | {"alembic_version"}
    finally:
        engine.dispose()
    assert schema_differences(url) == []
    command.check(alembic_config(url))  # autogenerate through migrations/env.py: nothing to do
    upgrade_database(url)  # a second upgrade is a no-op
    assert pending_revisions(url)[0] == heads


def _copy(metadata: MetaData) -> MetaData:
    copy = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(copy)
    return copy


def _facade_column(domain: MetaData, facade: MetaData) -> None:
    facade.tables["facade_route"].append_column(Column("owner", String(64)))


def _domain_table(domain: MetaData, facade: MetaData) -> None:
    Table("supplier", domain, Column("supplier_id", String(32), primary_key=True))


def _domain_index(domain: MetaData, facade: MetaData) -> None:
    Index("ix_batches_eta", domain.tables["batches"].c.eta)


MODEL_CHANGES = {
    "column": (_facade_column, "add_column", "owner"),
    "table": (_domain_table, "add_table", "supplier"),
    "index": (_domain_index, "add_index", "ix_batches_eta"),
}
"""A model change without its migration, what autogenerate reports, the name it names."""


def check_a_model_change_without_its_migration_is_found(url: str, change: str) -> None:
    upgrade_database(url)
    domain, facade = (_copy(metadata) for metadata in TARGET)
    assert schema_differences(url, (domain, facade)) == []  # the copies are faithful
    make, kind, name = MODEL_CHANGES[change]

    make(domain, facade)
    differences = schema_differences(url, (domain, facade))

    assert [difference[0] for difference in differences] == [kind]
    assert name in str(differences)


@pytest.mark.postgres
def test_postgresql_upgrade_from_empty_matches_the_model(pg_url: str) -> None:
    check_upgrade_from_empty(pg_url)


def test_sqlite_upgrade_from_empty_matches_the_model(tmp_path: Path) -> None:
    check_upgrade_from_empty(f"sqlite:///{tmp_path / 'new.db'}")


@pytest.mark.postgres
@pytest.mark.parametrize("change", sorted(MODEL_CHANGES))
def test_postgresql_comparison_finds_a_model_change_without_its_migration(
    pg_url: str, change: str
) -> None:
    check_a_model_change_without_its_migration_is_found(pg_url, change)


@pytest.mark.parametrize("change", sorted(MODEL_CHANGES))
def test_sqlite_comparison_finds_a_model_change_without_its_migration(
    tmp_path: Path, change: str
) -> None:
    check_a_model_change_without_its_migration_is_found(f"sqlite:///{tmp_path / 'new.db'}", change)


def test_the_initial_revision_is_the_new_domain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(url, "0001_new_domain")
    assert pending_revisions(url)[0] == {"0001_new_domain"}
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == {
            "alembic_version",
            "products",
            "batches",
            "order_lines",
            "allocations",
            "allocations_view",
            "legacy_product_map",
            "legacy_lot_map",
            "legacy_line_map",
            "applied_change_position",
            "anomaly",
        }
    finally:
        engine.dispose()


def check_0003_keeps_the_allocations(url: str) -> None:
    """From the first layout (order_lines + allocations) to batch_allocations and back."""
    upgrade_database(url, "0002_facade_routes")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO products (sku, version_number) VALUES ('LAMP', 3)")
            )
            connection.execute(
                text(
                    "INSERT INTO batches (id, reference, sku, purchased_quantity) "
                    "VALUES (1, 'b1', 'LAMP', 10), (2, 'b2', 'LAMP', 5)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO order_lines (id, orderid, sku, qty) "
                    "VALUES (1, 'o1', 'LAMP', 2), (2, 'o2', 'LAMP', 3), (3, 'o3', 'LAMP', 1)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO allocations (orderline_id, batch_id) VALUES (1, 1), (2, 1), (3, 2)"
                )
            )
        upgrade_database(url, "0003_consumer_operations")
        with engine.connect() as connection:
            lines = connection.execute(
                text("SELECT batchref, orderid, sku, qty FROM batch_allocations ORDER BY orderid")
            ).all()
            totals = connection.execute(
                text("SELECT reference, allocated_quantity FROM batches ORDER BY reference")
            ).all()
        assert [tuple(r) for r in lines] == [
            ("b1", "o1", "LAMP", 2),
            ("b1", "o2", "LAMP", 3),
            ("b2", "o3", "LAMP", 1),
        ]
        assert [tuple(r) for r in totals] == [("b1", 5), ("b2", 1)]

        command.downgrade(alembic_config(url), "0002_facade_routes")
        with engine.connect() as connection:
            back = connection.execute(
                text(
                    "SELECT b.reference, ol.orderid, ol.qty FROM allocations a "
                    "JOIN order_lines ol ON ol.id = a.orderline_id "
                    "JOIN batches b ON b.id = a.batch_id ORDER BY ol.orderid"
                )
            ).all()
        assert [tuple(r) for r in back] == [("b1", "o1", 2), ("b1", "o2", 3), ("b2", "o3", 1)]
    finally:
        engine.dispose()


def test_sqlite_0003_moves_the_allocations_and_back(tmp_path: Path) -> None:
    check_0003_keeps_the_allocations(f"sqlite:///{tmp_path / 'new.db'}")


@pytest.mark.postgres
def test_postgresql_0003_moves_the_allocations_and_back(pg_url: str) -> None:
    check_0003_keeps_the_allocations(pg_url)


def check_0005_numbers_the_stored_lines(url: str) -> None:
    """Lines stored before allocation order was kept are numbered by legacy line id."""
    upgrade_database(url, "0003_consumer_operations")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO products (sku) VALUES ('LAMP')"))
            connection.execute(
                text(
                    "INSERT INTO batches (reference, sku, purchased_quantity, allocated_quantity) "
                    "VALUES ('b1', 'LAMP', 10, 6), ('b2', 'LAMP', 5, 1), ('b3', 'LAMP', 5, 0)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO batch_allocations (batchref, orderid, sku, qty) VALUES "
                    "('b1', 'o-a', 'LAMP', 1), ('b1', 'o-b', 'LAMP', 2), "
                    "('b1', 'o-c', 'LAMP', 3), ('b2', 'o-d', 'LAMP', 1)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO legacy_line_map (line_id, orderid, sku, qty) VALUES "
                    "(30, 'o-a', 'LAMP', 1), (10, 'o-c', 'LAMP', 3), (20, 'o-d', 'LAMP', 1)"
                )
            )
        upgrade_database(url, "0005_allocation_order")
        with engine.connect() as connection:
            lines = connection.execute(
                text("SELECT batchref, orderid, seq FROM batch_allocations ORDER BY batchref, seq")
            ).all()
            last = connection.execute(
                text("SELECT reference, last_allocation_seq FROM batches ORDER BY reference")
            ).all()
        assert [tuple(r) for r in lines] == [
            ("b1", "o-c", 1),  # legacy line 10
            ("b1", "o-a", 2),  # legacy line 30
            ("b1", "o-b", 3),  # no legacy line known: after those, by order id
            ("b2", "o-d", 1),
        ]
        assert [tuple(r) for r in last] == [("b1", 3), ("b2", 1), ("b3", 0)]

        command.downgrade(alembic_config(url), "0003_consumer_operations")
        columns = {c["name"] for c in inspect(engine).get_columns("batch_allocations")}
        assert "seq" not in columns
    finally:
        engine.dispose()


def test_sqlite_0005_numbers_the_stored_lines(tmp_path: Path) -> None:
    check_0005_numbers_the_stored_lines(f"sqlite:///{tmp_path / 'new.db'}")


@pytest.mark.postgres
def test_postgresql_0005_numbers_the_stored_lines(pg_url: str) -> None:
    check_0005_numbers_the_stored_lines(pg_url)


def check_0013_numbers_the_batches(url: str) -> None:
    upgrade_database(url, "0012_shard_routes")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO products (sku, version_number) VALUES ('L', 1)"))
            connection.execute(
                text(
                    "INSERT INTO batches (reference, sku, purchased_quantity, eta) VALUES "
                    "('b-late', 'L', 10, NULL), ('b-early', 'L', 10, NULL), "
                    "('b-own', 'L', 10, NULL)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO legacy_lot_map (lot_id, batchref, sku) VALUES "
                    "(41, 'b-late', 'L'), (40, 'b-early', 'L')"
                )
            )
        upgrade_database(url, "0013_batch_creation_number")
        with engine.connect() as connection:
            numbers = connection.execute(
                text("SELECT reference, creation_number FROM batches ORDER BY creation_number")
            ).all()
        # legacy's lot_id where known (stored in commit order, numbered in lot order);
        # a batch of the new system's own after them
        assert [tuple(r) for r in numbers] == [("b-early", 40), ("b-late", 41), ("b-own", 42)]
        command.downgrade(alembic_config(url), "0012_shard_routes")
        assert "creation_number" not in {c["name"] for c in inspect(engine).get_columns("batches")}
    finally:
        engine.dispose()


def test_sqlite_0013_numbers_the_batches(tmp_path: Path) -> None:
    check_0013_numbers_the_batches(f"sqlite:///{tmp_path / 'new.db'}")


@pytest.mark.postgres
def test_postgresql_0013_numbers_the_batches(pg_url: str) -> None:
    check_0013_numbers_the_batches(pg_url)
