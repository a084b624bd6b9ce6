"""The SQLAlchemy repository on PostgreSQL: mapping, locking, optimistic concurrency."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from new_domain import upgrade_database
from new_domain.adapters import orm
from new_domain.adapters.database import create_engine
from new_domain.adapters.repository import SqlAlchemyRepository
from new_domain.domain.model import Batch, OrderLine, Product

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    upgrade_database(pg_url)
    orm.start_mappers()
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def save_lamp(engine: Engine) -> None:
    product = Product("LAMP")
    product.add_batch(Batch("b-now", "LAMP", 10, None))
    product.add_batch(Batch("b-june", "LAMP", 20, date(2024, 6, 1)))
    product.allocate(OrderLine("o1", "LAMP", 3))
    with Session(engine) as session:
        SqlAlchemyRepository(session).add(product)
        session.commit()


def test_an_aggregate_round_trips_with_its_batches_and_lines(engine: Engine) -> None:
    save_lamp(engine)
    with Session(engine) as session:
        repo = SqlAlchemyRepository(session)
        product = repo.get("LAMP")
        assert product is not None
        assert product.version_number == 3
        assert product.events == []
        assert [(b.reference, b.eta, b.purchased_quantity) for b in product.batches] == [
            ("b-now", None, 10),
            ("b-june", date(2024, 6, 1), 20),
        ]
        assert product.batch("b-now").allocations == {OrderLine("o1", "LAMP", 3)}  # type: ignore[union-attr]
        assert repo.seen == {product}
        assert repo.get("NOPE") is None


def test_get_by_batchref_finds_the_owning_product(engine: Engine) -> None:
    save_lamp(engine)
    with Session(engine) as session:
        product = SqlAlchemyRepository(session).get_by_batchref("b-june")
        assert product is not None and product.sku == "LAMP"
        assert SqlAlchemyRepository(session).get_by_batchref("nope") is None


def test_deallocating_removes_the_stored_line(engine: Engine) -> None:
    save_lamp(engine)
    with Session(engine) as session:
        product = SqlAlchemyRepository(session).get("LAMP")
        assert product is not None
        product.record_deallocation("o1", "b-now")
        session.commit()
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(orm.allocations)) == 0
        assert connection.scalar(select(func.count()).select_from(orm.order_lines)) == 0


def test_get_locks_the_product_row_until_the_transaction_ends(engine: Engine) -> None:
    save_lamp(engine)
    lock_probe = text("SELECT sku FROM products WHERE sku = 'LAMP' FOR UPDATE NOWAIT")
    with Session(engine) as holder:
        assert SqlAlchemyRepository(holder).get("LAMP") is not None
        with (
            engine.connect() as other,
            pytest.raises(OperationalError, match="could not obtain lock"),
        ):
            other.execute(lock_probe)
        holder.commit()
    with engine.connect() as other:
        assert other.execute(lock_probe).scalar() == "LAMP"


def test_an_unlocked_concurrent_update_is_refused_by_the_version_number(engine: Engine) -> None:
    save_lamp(engine)
    with Session(engine) as first, Session(engine) as second:
        mine = first.get(Product, "LAMP")  # plain loads: no lock taken
        theirs = second.get(Product, "LAMP")
        assert mine is not None and theirs is not None
        mine.change_batch_quantity("b-now", 5)
        theirs.change_batch_quantity("b-now", 7)
        first.commit()
        with pytest.raises(StaleDataError):
            second.commit()
    with engine.connect() as connection:
        quantity = connection.scalar(
            select(orm.batches.c.purchased_quantity).where(orm.batches.c.reference == "b-now")
        )
        assert quantity == 5
