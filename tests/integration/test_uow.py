"""The SQLAlchemy unit of work and the message bus on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from new_domain import Allocation, bootstrap, open_read_model, upgrade_database
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.domain import commands
from new_domain.domain.model import Batch, Product
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import SqlAlchemyUnitOfWork

pytestmark = pytest.mark.postgres


@pytest.fixture
def new_db(pg_url: str) -> str:
    upgrade_database(pg_url)
    return pg_url


@pytest.fixture
def uow(new_db: str) -> Iterator[SqlAlchemyUnitOfWork]:
    uow = SqlAlchemyUnitOfWork(create_engine(new_db, for_writes=True))
    yield uow
    uow.close()


@pytest.fixture
def bus(uow: SqlAlchemyUnitOfWork) -> MessageBus:
    return bootstrap(uow=uow)


def batch_refs(uow: SqlAlchemyUnitOfWork) -> list[str]:
    with uow.engine.connect() as connection:
        return list(connection.scalars(select(orm.batches.c.reference).order_by("reference")))


def test_commit_persists(uow: SqlAlchemyUnitOfWork) -> None:
    with uow:
        uow.products.add(Product("LAMP", [Batch("b1", "LAMP", 10, None)]))
        uow.commit()
    assert batch_refs(uow) == ["b1"]


def test_uncommitted_work_is_rolled_back(uow: SqlAlchemyUnitOfWork) -> None:
    with uow:
        uow.products.add(Product("LAMP", [Batch("b1", "LAMP", 10, None)]))
    assert batch_refs(uow) == []


def test_work_is_rolled_back_on_error(uow: SqlAlchemyUnitOfWork) -> None:
    with pytest.raises(ZeroDivisionError), uow:
        uow.products.add(Product("LAMP", [Batch("b1", "LAMP", 10, None)]))
        uow.flush()
        1 / 0  # noqa: B018
    assert batch_refs(uow) == []


def test_a_nested_block_joins_the_outer_transaction(uow: SqlAlchemyUnitOfWork) -> None:
    with uow:
        with uow:
            uow.products.add(Product("LAMP", [Batch("b1", "LAMP", 10, None)]))
            uow.commit()  # only flushes
        assert batch_refs(uow) == []  # not visible to other connections yet
        uow.commit()
    assert batch_refs(uow) == ["b1"]


def test_callbacks_run_after_the_commit_only(uow: SqlAlchemyUnitOfWork) -> None:
    ran: list[str] = []
    with uow:
        uow.after_commit(lambda: ran.append("rolled back"))
    with uow:
        with uow:
            uow.after_commit(lambda: ran.append("committed"))
            uow.commit()  # joined: not yet
        assert ran == []
        uow.commit()
    assert ran == ["committed"]


def test_write_and_read_model_commit_in_one_transaction(
    bus: MessageBus, uow: SqlAlchemyUnitOfWork, new_db: str
) -> None:
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    with pytest.raises(RuntimeError), uow:
        bus.handle(commands.Allocate("o1", "LAMP", 2))  # joins the outer block
        raise RuntimeError("the batch around it failed")
    read_model = open_read_model(new_db)
    assert read_model.allocations_for("o1") == []
    with uow:
        lamp = uow.products.get("LAMP")
        assert lamp is not None and lamp.batch("b1").available_quantity == 10  # type: ignore[union-attr]

    bus.handle(commands.Allocate("o1", "LAMP", 2))
    assert read_model.allocations_for("o1") == [Allocation("LAMP", "b1")]
    read_model.close()


def test_concurrent_allocations_to_one_product_are_serialised(bus: MessageBus, new_db: str) -> None:
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def allocate(orderid: str) -> None:
        own_bus = bootstrap(new_db)  # one unit of work per thread
        try:
            start.wait()
            own_bus.handle(commands.Allocate(orderid, "LAMP", 3))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            own_bus.uow.close()

    threads = [threading.Thread(target=allocate, args=(f"o{i}",)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with bus.uow as uow:
        lamp = uow.products.get("LAMP")
        assert lamp is not None
        assert lamp.version_number == 3
        assert lamp.batch("b1").available_quantity == 4  # type: ignore[union-attr]


def test_the_read_model_survives_its_connections_being_closed_by_the_server(
    new_db: str, bus: MessageBus
) -> None:
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    bus.handle(commands.Allocate("o1", "LAMP", 2))
    with open_read_model(new_db) as read_model:
        assert read_model.allocations_for("o1") == [Allocation("LAMP", "b1")]
        with read_model.engine.connect() as connection:  # one statement, no transaction
            connection.exec_driver_sql("SELECT 1")
            assert connection.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
        killer = create_engine(new_db)
        with killer.begin() as connection:  # what a server restart does to the pool
            closed = connection.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).scalar()
        killer.dispose()
        assert closed

        assert read_model.allocations_for("o1") == [Allocation("LAMP", "b1")]
        assert read_model.lag_seconds() is None
