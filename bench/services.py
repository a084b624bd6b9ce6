"""The local PostgreSQL and RabbitMQ: unique databases and names, cleaned up after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import pika
import psycopg


@dataclass(frozen=True)
class Services:
    """Where the benchmarks find PostgreSQL (as a superuser) and RabbitMQ."""

    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"

    @classmethod
    def from_environment(cls) -> Services:
        """Defaults, overridden by ``BENCH_PG_HOST``, ``BENCH_PG_PORT``, ``BENCH_PG_USER``
        and ``BENCH_AMQP_URL``."""
        return cls(
            pg_host=os.environ.get("BENCH_PG_HOST", cls.pg_host),
            pg_port=int(os.environ.get("BENCH_PG_PORT", str(cls.pg_port))),
            pg_user=os.environ.get("BENCH_PG_USER", cls.pg_user),
            amqp_url=os.environ.get("BENCH_AMQP_URL", cls.amqp_url),
        )

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


ROLES = ("pipeline", "baseline", "lag", "snapshot")
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


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
