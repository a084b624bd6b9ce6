"""The faults: what each does to the running pipeline, and the processes it is done to.

Kinds:

- ``kill_bridge`` / ``kill_consumer`` / ``kill_backsync``: SIGKILL to the process group of
  ``strangler bridge run`` / ``strangler consume`` / ``strangler backsync run``, then a
  fresh one started;
- ``broker_restart``: ``rabbitmqctl stop_app``, an outage, ``start_app`` (always, in a
  ``finally``) and ``await_startup``;
- ``pg_terminate``: ``pg_terminate_backend`` on every PostgreSQL backend of the bridge, the
  consumer, the outbox relay and back-sync (told apart from the legacy shop's and the
  facade's by ``application_name``);
- ``new_db_outage``: the new database refuses connections (``ALLOW_CONNECTIONS false``
  and its backends terminated) for a few seconds, then accepts them again;
- ``poison``: malformed and schema-violating messages published into the run's
  ``legacy.cdc`` exchange with routing keys that reach the consumer's queue;
- ``bad_paths``: requests to the facade (``strangler serve`` in front of the shop, with
  ``GET /allocations/<orderid>`` in shadow mode) whose paths hold NUL, invalid UTF-8 and
  control characters, interleaved with good requests to the shadowed route.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
from tenacity import retry, stop_after_delay, wait_fixed

import broker
from broker import Message
from tests.e2e.processes import STRANGLER
from tests.integration.facade_process import raw_exchange

KINDS = (
    "kill_bridge",
    "kill_consumer",
    "kill_backsync",
    "broker_restart",
    "pg_terminate",
    "new_db_outage",
    "poison",
    "bad_paths",
)

BRIDGE_APP, CONSUMER_APP, SHOP_APP = "chaos-bridge", "chaos-consumer", "chaos-legacy-shop"
FACADE_APP, OUTBOX_APP, BACKSYNC_APP = "chaos-facade", "chaos-outbox-relay", "chaos-backsync"


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


def node_loss(script: Path, node: int, outage: float) -> None:
    """Stop node ``node`` of the local RabbitMQ cluster for ``outage`` seconds; it is
    always started again."""
    subprocess.run([str(script), "stop-node", str(node)], check=True, capture_output=True,
                   timeout=180)  # fmt: skip
    try:
        threading.Event().wait(outage)  # the outage itself, not a synchronisation
    finally:
        subprocess.run([str(script), "start-node", str(node)], check=True, capture_output=True,
                       timeout=420)  # fmt: skip


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


# -- bad paths to the facade --------------------------------------------------------------

SHADOWED = ("GET", "/allocations/<orderid>")
"""The route the run's facade shadows (the one route the new system can answer)."""


def bad_targets(orderid: str) -> list[bytes]:
    """Request targets on the shadowed route that must never reach either system: NUL
    (encoded), invalid UTF-8 (encoded and raw), CR/LF and terminal control characters, an
    encoded UTF-16 surrogate."""
    base = f"/allocations/{orderid}".encode()
    return [
        base + b"%00",
        base + b"%00x",
        base + b"%ff%fe",
        base + b"\xff",
        base + b"\xc3\x28",
        base + b"%0d%0aforged",
        base + b"%01%1b[2J",
        b"/allocations/%ed%a0%80",
    ]


@dataclass
class FacadeRound:
    """One round of requests to the facade: good ones to the shadowed route (their paths,
    as the facade records them) and bad ones, with what each got that it should not."""

    good: list[str] = field(default_factory=list)
    good_answered: int = 0
    bad: int = 0
    bad_refused: int = 0
    refused_by_facade: int = 0  # 400s the facade wrote (each must be one log line)
    problems: list[str] = field(default_factory=list)


def facade_round(url: str, port: int, orderids: list[str], tag: str) -> FacadeRound:
    """For each of ``orderids``, a bad request (cycling through :func:`bad_targets`) then a
    good ``GET /allocations/<orderid>``. A good one must be answered by legacy (200 or 404);
    a bad one refused with 400 (404 where no route takes a CR or LF) and a JSON
    ``{"error", "detail"}`` body, by the facade or its HTTP server, never by a system."""
    outcome = FacadeRound()
    targets = bad_targets(tag)
    with requests.Session() as http:
        for n, orderid in enumerate(orderids):
            target = targets[n % len(targets)]
            status, headers, body = _raw_get(port, target)
            outcome.bad += 1
            served_by = headers.get("x-served-by", "the server")
            try:
                error = json.loads(body)
            except ValueError:
                error = None
            if (
                status in (400, 404)
                and served_by in ("facade", "the server")
                and isinstance(error, dict)
                and set(error) == {"error", "detail"}
            ):
                outcome.bad_refused += 1
                outcome.refused_by_facade += status == 400 and served_by == "facade"
            else:
                outcome.problems.append(f"{target!r} -> {status} by {served_by}: {body[:200]!r}")
            path = f"/allocations/{orderid}"
            answer = http.get(url + path, timeout=30)
            outcome.good.append(path)
            if answer.status_code in (200, 404) and answer.headers.get("X-Served-By") == "legacy":
                outcome.good_answered += 1
            else:
                outcome.problems.append(
                    f"{path} -> {answer.status_code} by "
                    f"{answer.headers.get('X-Served-By')}: {answer.text[:200]}"
                )
    return outcome


def _raw_get(port: int, target: bytes) -> tuple[int, dict[str, str], bytes]:
    """``GET target`` written as is on a fresh connection: (status, headers, body)."""
    answer = raw_exchange(
        port,
        b"GET " + target + b" HTTP/1.1\r\nHost: facade\r\nConnection: close\r\n\r\n",
        timeout=30,
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    parts = status_line.split(b" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers, body


class FaultLog:
    """Faults injected, by kind, and what each did (for the summary)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.events: list[dict[str, object]] = []

    def record(self, kind: str, at_changes: int, **detail: object) -> None:
        self.counts[kind] += 1
        self.events.append({"kind": kind, "at_changes": at_changes, **detail})
