from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import (
    local_cluster,
    mariadb_database,
    postgres_database,
    require_rabbitmq,
    unique_name,
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty PostgreSQL database."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def pg_url_factory() -> Iterator[object]:
    """Call it to get more fresh PostgreSQL databases (e.g. legacy and new)."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield lambda: stack.enter_context(postgres_database())


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """SQLAlchemy URL (``mysql+pymysql://``) of a fresh, empty MariaDB database."""
    with mariadb_database() as url:
        yield url


@pytest.fixture
def amqp_url() -> str:
    """URL of the local RabbitMQ (tests use uniquely named queues and exchanges)."""
    return require_rabbitmq()


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """The local 3-node RabbitMQ cluster (deploy/rabbitmq/local-cluster.sh) as one
    BROKER_URL listing its nodes; started once for the session when it is not running."""
    with local_cluster() as url:
        yield url


@pytest.fixture
def queue_name() -> str:
    return unique_name("test_q")


@pytest.fixture
def memory_broker_url() -> Iterator[str]:
    """A fresh in-process broker, forgotten after the test."""
    from broker.memory import reset_memory_brokers

    url = f"memory://{unique_name('test')}"
    yield url
    reset_memory_brokers()


@pytest.fixture
def logical_pg_url() -> Iterator[str]:
    """A fresh database on the local ``wal_level=logical`` PostgreSQL cluster (port 5433,
    started by deploy/postgres/logical-cluster.sh when needed); its replication slots
    are dropped after the test, also when it fails."""
    from tests.services import logical_postgres_database

    with logical_postgres_database() as url:
        yield url
