"""The local PostgreSQL and RabbitMQ: unique databases and names, cleaned up after."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import pika
import psycopg

from bench.processes import BenchmarkFailed


@dataclass(frozen=True)
class Services:
    """Where the benchmarks find PostgreSQL (as a superuser) and RabbitMQ."""

    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    pg_logical_port: int = 5433
    """The cluster with ``wal_level=logical`` (log-based capture), same host and user."""

    @classmethod
    def from_environment(cls) -> Services:
        """Defaults, overridden by ``BENCH_PG_HOST``, ``BENCH_PG_PORT``, ``BENCH_PG_USER``,
        ``BENCH_PG_LOGICAL_PORT`` and ``BENCH_AMQP_URL``."""
        return cls(
            pg_host=os.environ.get("BENCH_PG_HOST", cls.pg_host),
            pg_port=int(os.environ.get("BENCH_PG_PORT", str(cls.pg_port))),
            pg_user=os.environ.get("BENCH_PG_USER", cls.pg_user),
            amqp_url=os.environ.get("BENCH_AMQP_URL", cls.amqp_url),
            pg_logical_port=int(os.environ.get("BENCH_PG_LOGICAL_PORT", str(cls.pg_logical_port))),
        )

    def logical(self) -> Services:
        """The same services with PostgreSQL on the ``wal_level=logical`` cluster, started
        by ``deploy/postgres/logical-cluster.sh`` when it does not answer (on this host)."""
        ensure_logical_cluster(self.pg_host, self.pg_logical_port)
        return replace(self, pg_port=self.pg_logical_port)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.pg_host} port={self.pg_port} user={self.pg_user} dbname={dbname}"

    def sqlalchemy_url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.pg_user}@{self.pg_host}:{self.pg_port}/{dbname}"

    @contextmanager
    def database(self, prefix: str) -> Iterator[Database]:
        """A fresh PostgreSQL database, dropped (even with open connections) after."""
        name = unique_name(prefix)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield Database(name, self.dsn(name), self.sqlalchemy_url(name))
        finally:
            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                drop_replication(conn, name)
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def amqp_names(self, prefix: str) -> Iterator[AmqpNames]:
        """Unique exchange and queue names; every exchange and queue derived from them is
        deleted after (the alternate exchange, dead-letter exchange and queue included)."""
        names = AmqpNames(unique_name(prefix))
        try:
            yield names
        finally:
            delete_amqp_objects(self.amqp_url, names)


@dataclass(frozen=True)
class Database:
    name: str
    dsn: str
    url: str
    """SQLAlchemy URL (``postgresql+psycopg://``)."""


@dataclass(frozen=True)
class AmqpNames:
    """Names for one benchmark run; ``exchange(x)`` and ``queue(x)`` are remembered."""

    prefix: str

    def exchange(self, role: str) -> str:
        return f"{self.prefix}.{role}.x"

    def queue(self, role: str) -> str:
        return f"{self.prefix}.{role}.q"

    def all_exchanges(self, roles: tuple[str, ...]) -> list[str]:
        names = []
        for role in roles:
            exchange = self.exchange(role)
            names += [exchange, f"{exchange}.unrouted"]
        return names

    def all_queues(self, roles: tuple[str, ...]) -> list[str]:
        names = []
        for role in roles:
            queue = self.queue(role)
            names += [queue, f"{queue}.dlq", f"{self.exchange(role)}.unrouted"]
        return names


ROLES = (
    "pipeline", "baseline", "lag", "snapshot", "events", "backsync", "triggers", "debezium",
)  # fmt: skip
"""The exchange/queue roles the benchmarks use (cleanup deletes all of them)."""


def delete_amqp_objects(amqp_url: str, names: AmqpNames) -> None:
    """Delete every queue and exchange the run may have declared (missing ones too)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for queue in names.all_queues(ROLES):
            _quietly(connection, "queue_delete", queue)
        dead_letter = [f"{names.queue(role)}.dlx" for role in ROLES]
        for exchange in names.all_exchanges(ROLES) + dead_letter:
            _quietly(connection, "exchange_delete", exchange)
    finally:
        with suppress(Exception):
            connection.close()


def _quietly(connection: pika.BlockingConnection, method: str, name: str) -> None:
    """``channel.<method>(name)``; a missing object is fine (it closes the channel)."""
    channel = connection.channel()
    try:
        getattr(channel, method)(name)
    except pika.exceptions.ChannelClosedByBroker:
        return
    with suppress(Exception):
        channel.close()


def queue_exists(amqp_url: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        return True
    finally:
        with suppress(Exception):
            connection.close()


LOGICAL_CLUSTER_SCRIPT = (
    Path(__file__).resolve().parents[1] / "deploy" / "postgres" / "logical-cluster.sh"
)


def ensure_logical_cluster(host: str, port: int) -> None:
    """Start the local ``wal_level=logical`` cluster on ``port`` when it does not answer;
    :class:`BenchmarkFailed` when it still does not (or is not on this machine)."""
    if _reachable(host, port):
        return
    if host not in ("127.0.0.1", "localhost"):
        raise BenchmarkFailed(f"no PostgreSQL answers on {host}:{port} (BENCH_PG_LOGICAL_PORT)")
    started = subprocess.run(
        [str(LOGICAL_CLUSTER_SCRIPT), "start"],
        capture_output=True, text=True, timeout=120, close_fds=True,
        env={**os.environ, "STRANGLER_PG_LOGICAL_PORT": str(port)},
    )  # fmt: skip
    if started.returncode != 0 or not _reachable(host, port):
        output = (started.stdout + started.stderr).strip().splitlines()
        raise BenchmarkFailed(
            f"the wal_level=logical cluster did not start on {host}:{port}: "
            f"{output[-1] if output else f'exit {started.returncode}'}"
        )


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def drop_replication(conn: psycopg.Connection[tuple[object, ...]], database: str) -> None:
    """Drop every replication slot of ``database`` (ending the WAL senders that hold
    them first); its publications go with the database."""
    deadline = time.monotonic() + 30
    while True:
        slots = conn.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
            (database,),
        ).fetchall()
        if not slots:
            return
        for slot, pid in slots:
            if pid is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            else:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = %s AND NOT active",
                    (slot,),
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replication slots of {database} could not be dropped")
        time.sleep(0.1)  # a terminated WAL sender releases its slot asynchronously


def queue_depth(amqp_url: str, queue: str) -> int:
    """Messages ready in ``queue`` now."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        with suppress(Exception):
            connection.close()


def purge_queues(amqp_url: str, *queues: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_purge(queue)
    finally:
        with suppress(Exception):
            connection.close()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
