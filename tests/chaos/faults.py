"""The faults: what each does to the running pipeline, and the processes it is done to.

Kinds:

- ``kill_bridge`` / ``kill_consumer``: SIGKILL to the process group of ``strangler bridge
  run`` / ``strangler consume``, then a fresh one started;
- ``broker_restart``: ``rabbitmqctl stop_app``, an outage, ``start_app`` (always, in a
  ``finally``) and ``await_startup``;
- ``pg_terminate``: ``pg_terminate_backend`` on every PostgreSQL backend of the bridge and
  the consumer (told apart from the legacy shop's by ``application_name``);
- ``new_db_outage``: the new database refuses connections (``ALLOW_CONNECTIONS false``
  and its backends terminated) for a few seconds, then accepts them again;
- ``poison``: malformed and schema-violating messages published into the run's
  ``legacy.cdc`` exchange with routing keys that reach the consumer's queue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from tenacity import retry, stop_after_delay, wait_fixed

import broker
from broker import Message
from tests.e2e.processes import STRANGLER

KINDS = (
    "kill_bridge",
    "kill_consumer",
    "broker_restart",
    "pg_terminate",
    "new_db_outage",
    "poison",
)

BRIDGE_APP, CONSUMER_APP, SHOP_APP = "chaos-bridge", "chaos-consumer", "chaos-legacy-shop"


def with_application_name(url: str, name: str) -> str:
    """``url`` whose connections show ``name`` in ``pg_stat_activity``."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


class Supervised:
    """One long-running ``strangler`` command: started, SIGKILLed, restarted, stopped.
    Output of every incarnation is appended to ``<logs>/<name>.log``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **env}
        self.log_path = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [STRANGLER, *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def assert_running(self) -> None:
        assert self.running(), f"{self.name} exited:\n{self.log()}"

    def kill(self) -> None:
        """SIGKILL, wherever it is; the process must have been running."""
        self.assert_running()
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the exit status (a clean stop is 0)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            return -9

    def current_log(self) -> str:
        """What the current incarnation has written so far."""
        text = self.log_path.read_text(errors="replace")
        return text.rsplit(f"--- start {self.starts}\n", 1)[-1]

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=180)


def broker_restart(outage: float) -> None:
    """Stop the RabbitMQ application for ``outage`` seconds; it is always started again."""
    rabbitmqctl("stop_app")
    try:
        threading.Event().wait(outage)  # the outage itself, not a synchronisation
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup", "--timeout", "180")


def _admin(admin_dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(admin_dsn, autocommit=True)


def pg_terminate(admin_dsn: str, databases: list[str], applications: list[str]) -> int:
    """Terminate the backends of ``applications`` on ``databases``; how many went."""
    with _admin(admin_dsn) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = ANY(%s) AND application_name = ANY(%s)",
            (databases, applications),
        ).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def new_db_outage(admin_dsn: str, database: str, outage: float) -> None:
    """``database`` refuses new connections and loses its current ones for ``outage`` s."""
    with _admin(admin_dsn) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            threading.Event().wait(outage)  # the outage itself, not a synchronisation
        finally:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


# -- poison ------------------------------------------------------------------------------

_ENVELOPE_MISSING_SOURCE = {"before": None, "after": {"lot_id": 1}, "op": "c", "ts_ms": 1}


def poison_messages(
    seed: int, first: int, count: int, stream: tuple[str, str, str] | None = None
) -> list[Message]:
    """``count`` messages the consumer cannot apply, ids ``poison-<seed>-<n>``: bodies
    that are not JSON, not an object, or envelopes that break the change schema;
    attributes and fields the dead-letter table cannot hold as they are (an AMQP type
    over 64 characters, a content type over 128, a position of 2^63, NUL in a table name
    and in a header); and, given the run's ``stream`` (server name, database, install
    id), a forged change with the real stream's identity and a far-off position."""
    hostile = ([_forged] if stream is not None else []) + _hostile()
    specs = [spec for pair in zip(hostile, _BODIES, strict=False) for spec in pair]
    specs += hostile[len(_BODIES) :] + _BODIES[len(hostile) :]
    out = []
    for n in range(first, first + count):
        make = specs[n % len(specs)]
        out.append(make(seed, n, stream))
    return out


Spec = Callable[[int, int, "tuple[str, str, str] | None"], Message]


def _body(routing_key: str, body: bytes) -> Spec:
    return lambda seed, n, _: Message(
        routing_key, body, f"poison-{seed}-{n}", headers={"x-chaos": "poison"}
    )


_BODIES: list[Spec] = [
    _body("stock_lot.c", b"{this is not json"),
    _body("lot_allocation.c", b"\xff\xfe\x00binary"),
    _body("cust_order_line.c", b"[1, 2, 3]"),
    _body("stock_lot.u", json.dumps(_ENVELOPE_MISSING_SOURCE).encode()),
    _body(
        "lot_allocation.d",
        json.dumps(
            {
                "before": None,
                "after": None,
                "op": "d",
                "ts_ms": 1,
                "source": {"name": "legacy", "db": "chaos", "table": "lot_allocation", "seq": 1},
            }
        ).encode(),
    ),
    _body(
        "stock_lot.x",
        json.dumps(
            {
                "before": None,
                "after": {"lot_id": 1},
                "op": "x",
                "ts_ms": 1,
                "source": {"name": "legacy", "db": "chaos", "table": "stock_lot", "seq": 1},
            }
        ).encode(),
    ),
    _body(
        "cust_order_line.c",
        json.dumps(
            {
                "before": None,
                "after": "not an object",
                "op": "c",
                "ts_ms": 1,
                "source": {
                    "name": "legacy",
                    "db": "chaos",
                    "table": "cust_order_line",
                    "seq": "seven",
                },
            }
        ).encode(),
    ),
]


def _unknown_allocation(n: int, **source: object) -> bytes:
    """A well-formed allocation of rows never seen, at position ``n`` of its own stream."""
    envelope = {
        "before": None,
        "after": {"alloc_id": n, "lot_id": -1, "line_id": -1},
        "op": "c",
        "ts_ms": 1,
        "source": {
            "name": "legacy",
            "db": "chaos-poison",
            "table": "lot_allocation",
            "seq": n,
            **source,
        },
    }
    return json.dumps(envelope).encode()


def _hostile() -> list[Spec]:
    def message(**attributes: Any) -> Spec:
        def make(seed: int, n: int, _: tuple[str, str, str] | None) -> Message:
            fields: dict[str, Any] = {"headers": {"x-chaos": "poison"}, **attributes}
            body = fields.pop("body", None) or _unknown_allocation(n)
            return Message("lot_allocation.c", body, f"poison-{seed}-{n}", **fields)

        return make

    return [
        message(type="t" * 100),
        message(content_type="c" * 200),
        message(body=_unknown_allocation(2**63)),
        message(body=_unknown_allocation(1, table="lot\x00allocation")),
        message(headers={"x-chaos": "poison", "x-note": "nul\x00here"}),
    ]


def _forged(seed: int, n: int, stream: tuple[str, str, str] | None) -> Message:
    assert stream is not None
    name, db, install = stream
    seq = 10**12 + n
    body = {
        "before": None,
        "after": {"id": n},
        "op": "c",
        "ts_ms": 1,
        "source": {"name": name, "db": db, "table": "audit_log", "seq": seq, "change_id": seq},
    }
    return Message(
        "audit_log.c", json.dumps(body).encode(), f"{install}:{seq}", headers={"x-chaos": "poison"}
    )


@retry(stop=stop_after_delay(180), wait=wait_fixed(1), reraise=True)
def publish(amqp_url: str, exchange: str, messages: list[Message]) -> None:
    """Publish with confirms, again after a broker outage (same message ids)."""
    connection = broker.connect(amqp_url)
    try:
        connection.publish(exchange, messages)
    finally:
        connection.close()


class FaultLog:
    """Faults injected, by kind, and what each did (for the summary)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.events: list[dict[str, object]] = []

    def record(self, kind: str, at_changes: int, **detail: object) -> None:
        self.counts[kind] += 1
        self.events.append({"kind": kind, "at_changes": at_changes, **detail})
