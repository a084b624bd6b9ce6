"""Reaching the local PostgreSQL, MariaDB and RabbitMQ from tests.

Each test gets its own uniquely named database or queue and cleans up. When a service
is not reachable the test is skipped on a developer machine and fails under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    """Skip (or under CI=true, fail) when ``service`` does not answer on host:port."""
    if _reachable(host, port):
        return
    message = f"{service} is not reachable on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


def require_haproxy() -> str:
    """The haproxy binary; skip (or under CI=true, fail) when it is not installed."""
    from skeleton_app.dataplane import find_haproxy

    binary = find_haproxy()
    if binary is not None:
        return binary
    message = "haproxy is not installed (apt-get install haproxy)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextmanager
def postgres_database(prefix: str = "strangler_test") -> Iterator[str]:
    """Create a fresh PostgreSQL database and yield its SQLAlchemy URL; drop it after."""
    require("PostgreSQL", PG_HOST, PG_PORT)
    import psycopg

    name = unique_name(prefix)
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


MARIADB_HOST = os.environ.get("TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("TEST_MARIADB_PORT", "3306"))


@contextmanager
def mariadb_database(prefix: str = "strangler_test") -> Iterator[str]:
    """Create a fresh MariaDB database and yield its SQLAlchemy URL; drop it after."""
    require("MariaDB", MARIADB_HOST, MARIADB_PORT)
    import pymysql

    name = unique_name(prefix)
    admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        yield f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def require_rabbitmq() -> str:
    require("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


LOGICAL_PG_PORT = int(os.environ.get("TEST_PG_LOGICAL_PORT", "5433"))


def require_logical_postgres() -> None:
    """The second PostgreSQL cluster with ``wal_level=logical`` (started by
    ``deploy/postgres/logical-cluster.sh start`` when it does not answer, as the
    benchmarks start it); skip (or under CI=true, fail) when it cannot be started."""
    from bench.processes import BenchmarkFailed
    from bench.services import ensure_logical_cluster

    try:
        ensure_logical_cluster(PG_HOST, LOGICAL_PG_PORT)
    except BenchmarkFailed as error:
        message = f"the logical PostgreSQL cluster is not available: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
        pytest.skip(message)


@contextmanager
def logical_postgres_database(prefix: str = "strangler_logical") -> Iterator[str]:
    """A fresh database on the ``wal_level=logical`` cluster; after the test its
    replication slots are dropped (their WAL senders ended first), then the database
    (with its publications)."""
    require_logical_postgres()
    import psycopg

    from bench.services import drop_replication

    name = unique_name(prefix)
    admin = f"host={PG_HOST} port={LOGICAL_PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{LOGICAL_PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            drop_replication(conn, name)
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq" / "local-cluster.sh"
CLUSTER_PORTS = (5681, 5682, 5683)
CLUSTER_NODES = ",".join(f"amqp://guest:guest@127.0.0.1:{port}/%2F" for port in CLUSTER_PORTS)


@contextmanager
def local_cluster() -> Iterator[str]:
    """The local 3-node RabbitMQ cluster's nodes as one BROKER_URL. Started here (and
    destroyed after) when it is not running and this machine can run it (Debian's
    rabbitmq-server, as root); skipped, or under CI=true failed, when it cannot."""
    started = False
    if not all(_reachable("127.0.0.1", port) for port in CLUSTER_PORTS) and _can_start_cluster():
        result = subprocess.run(
            [str(CLUSTER_SCRIPT), "start"], timeout=900, capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.fail(
                f"{CLUSTER_SCRIPT.name} start failed ({result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
                pytrace=False,
            )
        started = True
    for port in CLUSTER_PORTS:
        require(f"the local RabbitMQ cluster ({CLUSTER_SCRIPT.name} start)", "127.0.0.1", port)
    try:
        yield CLUSTER_NODES
    finally:
        if started:
            subprocess.run([str(CLUSTER_SCRIPT), "destroy"], timeout=300, capture_output=True)


def _can_start_cluster() -> bool:
    return shutil.which("rabbitmq-server") is not None and os.geteuid() == 0
