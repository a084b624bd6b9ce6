"""The SQL repository on PostgreSQL and SQLite: mapping, partial loading, bulk writes,
locking, optimistic concurrency and allocation order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from new_domain import upgrade_database
from new_domain.adapters import orm
from new_domain.adapters.database import ConcurrentUpdate, create_engine
from new_domain.adapters.repository import SqlAlchemyRepository
from new_domain.bootstrap import bootstrap
from new_domain.domain import commands
from new_domain.domain.model import Batch, OrderLine, Product
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'new.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade_database(url)
    engine = create_engine(url, for_writes=True)
    yield engine
    engine.dispose()


def save(engine: Engine, product: Product) -> None:
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        repository.add(product)
        repository.flush()


def save_lamp(engine: Engine) -> None:
    product = Product("LAMP")
    product.add_batch(Batch("b-now", "LAMP", 10, None))
    product.add_batch(Batch("b-june", "LAMP", 20, date(2024, 6, 1)))
    product.allocate(OrderLine("o1", "LAMP", 3))
    save(engine, product)


def stored_lines(connection: Connection) -> set[tuple[str, str, int]]:
    t = orm.batch_allocations
    return {tuple(row) for row in connection.execute(select(t.c.batchref, t.c.orderid, t.c.qty))}  # type: ignore[misc]


def allocated_totals(connection: Connection) -> dict[str, int]:
    t = orm.batches
    return dict(connection.execute(select(t.c.reference, t.c.allocated_quantity)).all())  # type: ignore[arg-type]


def test_an_aggregate_round_trips_with_its_batches_and_lines(engine: Engine) -> None:
    save_lamp(engine)
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        product = repository.get("LAMP")
        assert product is not None
        assert product.version_number == 3
        assert product.events == []
        assert [(b.reference, b.eta, b.purchased_quantity) for b in product.batches] == [
            ("b-now", None, 10),
            ("b-june", date(2024, 6, 1), 20),
        ]
        assert product.batch("b-now").available_quantity == 7  # type: ignore[union-attr]
        assert product.batch("b-now").allocations == {OrderLine("o1", "LAMP", 3)}  # type: ignore[union-attr]
        assert repository.seen == {product}
        assert repository.get("NOPE") is None
        assert repository.get("LAMP") is product  # held for the transaction


def test_batches_are_loaded_in_their_creation_order(engine: Engine) -> None:
    product = Product("LAMP")
    product.add_batch(Batch("b-late", "LAMP", 10, None, creation_number=41))
    save(engine, product)  # stored first, numbered after the next one
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        stored = repository.get("LAMP")
        assert stored is not None
        stored.add_batch(Batch("b-early", "LAMP", 10, None, creation_number=40))
        stored.add_batch(Batch("b-own", "LAMP", 10, None))
        repository.flush()
    with engine.begin() as connection:
        loaded = SqlAlchemyRepository(connection).get("LAMP")
        assert loaded is not None
        assert [(b.reference, b.creation_number) for b in loaded.batches] == [
            ("b-early", 40),
            ("b-late", 41),
            ("b-own", 42),
        ]


def test_get_by_batchref_finds_the_owning_product(engine: Engine) -> None:
    save_lamp(engine)
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        product = repository.get_by_batchref("b-june")
        assert product is not None and product.sku == "LAMP"
        assert repository.get_by_batchref("nope") is None


def test_totals_are_right_before_any_line_is_loaded(engine: Engine) -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 1000, None)])
    for n in range(200):
        product.allocate(OrderLine(f"o{n}", "LAMP", 2))
    save(engine, product)
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        repository.preload(skus=["LAMP"], orderids=["o7"])
        lamp = repository.get("LAMP")
        assert lamp is not None
        batch = lamp.batch("b1")
        assert batch is not None and batch.available_quantity == 600
        assert batch.line_for("o7") == OrderLine("o7", "LAMP", 2)  # preloaded
        assert batch.line_for("o150") == OrderLine("o150", "LAMP", 2)  # loaded on demand
        assert batch.line_for("nobody") is None
        assert len(batch.allocations) == 200  # the whole set when asked for


def test_line_changes_are_written_and_totals_follow(engine: Engine) -> None:
    save_lamp(engine)
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        lamp = repository.get("LAMP")
        assert lamp is not None
        lamp.record_deallocation("o1", "b-now")
        lamp.record_allocation(OrderLine("o2", "LAMP", 4), "b-june")
        lamp.record_allocation(OrderLine("o3", "LAMP", 1), "b-june")
        lamp.record_allocation(OrderLine("o3", "LAMP", 2), "b-june")  # replaced
        lamp.add_batch(Batch("b-new", "LAMP", 5, None))
        lamp.record_allocation(OrderLine("o4", "LAMP", 5), "b-new")
        lamp.change_batch_quantity("b-now", 8)
        repository.flush()
    with engine.connect() as connection:
        assert stored_lines(connection) == {
            ("b-june", "o2", 4),
            ("b-june", "o3", 2),
            ("b-new", "o4", 5),
        }
        assert allocated_totals(connection) == {"b-now": 0, "b-june": 6, "b-new": 5}
        assert connection.scalar(select(orm.products.c.version_number)) == 3 + 7  # one per change
        quantity = select(orm.batches.c.purchased_quantity).where(
            orm.batches.c.reference == "b-now"
        )
        assert connection.scalar(quantity) == 8


def test_a_second_flush_writes_only_what_changed_since_the_first(engine: Engine) -> None:
    save_lamp(engine)
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        lamp = repository.get("LAMP")
        assert lamp is not None
        lamp.record_allocation(OrderLine("o2", "LAMP", 4), "b-june")
        repository.flush()
        lamp.record_deallocation("o2", "b-june")
        repository.flush()
        assert stored_lines(connection) == {("b-now", "o1", 3)}
        assert allocated_totals(connection) == {"b-now": 3, "b-june": 0}


def test_an_update_made_behind_the_repositorys_back_is_refused(engine: Engine) -> None:
    save_lamp(engine)
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        lamp = repository.get("LAMP")
        assert lamp is not None
        connection.execute(text("UPDATE products SET version_number = version_number + 1"))
        lamp.change_batch_quantity("b-now", 5)
        with pytest.raises(ConcurrentUpdate):
            repository.flush()


@pytest.mark.postgres
def test_get_locks_the_product_row_until_the_transaction_ends(pg_url: str) -> None:
    upgrade_database(pg_url)
    engine = create_engine(pg_url)
    try:
        save_lamp(engine)
        lock_probe = text("SELECT sku FROM products WHERE sku = 'LAMP' FOR UPDATE NOWAIT")
        with engine.connect() as holder:
            assert SqlAlchemyRepository(holder).get("LAMP") is not None
            with (
                engine.connect() as other,
                pytest.raises(OperationalError, match="could not obtain lock"),
            ):
                other.execute(lock_probe)
            holder.commit()
        with engine.connect() as other:
            assert other.execute(lock_probe).scalar() == "LAMP"
    finally:
        engine.dispose()


# -- allocation order -----------------------------------------------------------------


def stored_order(connection: Connection, batchref: str) -> list[tuple[str, int]]:
    t = orm.batch_allocations
    rows = connection.execute(
        select(t.c.orderid, t.c.seq).where(t.c.batchref == batchref).order_by(t.c.seq)
    )
    return [(orderid, seq) for orderid, seq in rows]


def test_lines_are_numbered_in_allocation_order_across_transactions(engine: Engine) -> None:
    product = Product("LAMP", [Batch("b1", "LAMP", 100, None)])
    product.allocate(OrderLine("o-c", "LAMP", 1))
    product.allocate(OrderLine("o-a", "LAMP", 1))
    save(engine, product)
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        lamp = repository.get("LAMP")
        assert lamp is not None
        lamp.allocate(OrderLine("o-b", "LAMP", 1))  # only o-b's lines are loaded
        lamp.deallocate("o-c")
        lamp.allocate(OrderLine("o-c", "LAMP", 2))  # again: now the newest
        repository.flush()
    with engine.begin() as connection:
        assert stored_order(connection, "b1") == [("o-a", 2), ("o-b", 3), ("o-c", 4)]
        assert connection.scalar(select(orm.batches.c.last_allocation_seq)) == 4
        lamp = SqlAlchemyRepository(connection).get("LAMP")
        assert lamp is not None
        batch = lamp.batch("b1")
        assert batch is not None
        assert batch.line_for("o-b") == OrderLine("o-b", "LAMP", 1)  # one order loaded first
        assert [line.orderid for line in batch.allocations_in_order()] == ["o-a", "o-b", "o-c"]


def test_a_new_batchs_lines_keep_their_numbers_over_several_flushes(engine: Engine) -> None:
    with engine.begin() as connection:
        repository = SqlAlchemyRepository(connection)
        product = Product("LAMP")
        repository.add(product)
        product.add_batch(Batch("b1", "LAMP", 10, None))
        product.allocate(OrderLine("o2", "LAMP", 1))
        product.allocate(OrderLine("o1", "LAMP", 1))
        repository.flush()
        product.deallocate("o2")
        product.allocate(OrderLine("o2", "LAMP", 1))
        repository.flush()
        assert stored_order(connection, "b1") == [("o1", 2), ("o2", 3)]


@pytest.mark.postgres
def test_a_cut_through_the_sql_unit_of_work_moves_the_newest_lines(pg_url: str) -> None:
    upgrade_database(pg_url)
    uow = SqlAlchemyUnitOfWork(create_engine(pg_url, for_writes=True))
    try:
        bus = bootstrap(uow=uow)
        bus.handle(commands.CreateBatch("warehouse", "LAMP", 10, None))
        bus.handle(commands.CreateBatch("shipment", "LAMP", 10, date(2024, 6, 1)))
        for orderid in ["o-c", "o-a", "o-d", "o-b"]:  # each in its own transaction
            bus.handle(commands.Allocate(orderid, "LAMP", 2))
        bus.handle(commands.SetBatchQuantity("warehouse", 5))
        with uow.engine.connect() as connection:
            assert stored_order(connection, "warehouse") == [("o-c", 1), ("o-a", 2)]
            assert stored_order(connection, "shipment") == [("o-d", 1), ("o-b", 2)]
            assert allocated_totals(connection) == {"warehouse": 4, "shipment": 4}
            view = orm.allocations_view
            assert dict(connection.execute(select(view.c.orderid, view.c.batchref)).all()) == {
                "o-c": "warehouse",
                "o-a": "warehouse",
                "o-d": "shipment",
                "o-b": "shipment",
            }
    finally:
        uow.close()
