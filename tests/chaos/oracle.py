"""The oracle: what the pipeline must show once the workload stopped and it drained.

Definitions (all per run; a run has its own databases, exchange and queues):

- **captured**: the rows of the legacy database's change table (``strangler_change``,
  retention set beyond the run so none is pruned); a change's message id is
  ``<install_id>:<change_id>``.
- **published**: the distinct message ids of type ``change`` that reached the audit
  queue, bound with ``#`` to the run's ``legacy.cdc`` exchange; deliveries beyond one per
  id are re-sends (allowed: at least once).
- **applied**: captured changes whose position (``pos``) is at or below the position the
  consumer stored for the stream in the new database (stored in the same transaction as
  the effect).
- **effects**: the changes that must raise exactly one domain event in the new domain's
  outbox (written in the same transaction): ``stock_lot`` inserts (``BatchCreated``),
  ``lot_allocation`` inserts (``Allocated``) and deletes (``Deallocated``), ``stock_lot``
  updates that change ``qty_units`` (``BatchQuantityChanged``). An outbox row names its
  cause (``legacy_change``).
- **lost** = captured but never published + captured but not applied + effect-bearing
  changes without their event.
- **double-applied** = events beyond the first per cause + events whose cause is not an
  effect-bearing captured change.
- **parity** = orders ``strangler verify`` found matching / orders checked, in %.
- **facade**: the facade's shadow results (``facade_shadow_result``) must be exactly one
  per good request sent through it to the shadowed route, all matching, none for a request
  with a bad path; every bad path refused with a JSON error; its log without a traceback,
  a raw NUL or an escape character, with one ``refused`` line per path it refused.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

import broker
from tests.chaos.faults import FacadeRound

_VERIFY_LINE = re.compile(
    r"checked (\d+) orders: (\d+) matching, (\d+) differing, (\d+) only in legacy,"
    r" (\d+) only in the new system, (\d+) errors"
)


class Store:
    """Read-only questions to the run's legacy and new databases."""

    def __init__(self, legacy_url: str, new_url: str) -> None:
        self.legacy: Engine = create_engine(legacy_url, pool_pre_ping=True)
        self.new: Engine = create_engine(new_url, pool_pre_ping=True)

    def close(self) -> None:
        self.legacy.dispose()
        self.new.dispose()

    def decision_parity(self) -> dict[str, dict[str, float]]:
        """Decision parity per write route (and ``unclassified``) as the consumer judged
        it: agree, differ, percent."""
        with self.new.connect() as conn:
            rows = conn.execute(text("SELECT route, agree, differ FROM decision_parity")).all()
        return {
            route: {
                "agree": int(agree),
                "differ": int(differ),
                "percent": round(100.0 * agree / (agree + differ), 4) if agree + differ else 0.0,
            }
            for route, agree, differ in sorted(rows)
        }

    def decision_samples(self) -> int:
        """Legacy decisions the consumer judged (every write route)."""
        with self.new.connect() as conn:
            return int(
                conn.scalar(
                    text(
                        "SELECT coalesce(sum(agree + differ), 0) FROM decision_parity"
                        " WHERE route <> 'unclassified'"
                    )
                )
                or 0
            )

    def ownership(self, group: str = "allocation") -> dict[str, Any]:
        """The write group's ownership row (legacy, epoch 0, before its first move)."""
        with self.new.connect() as conn:
            row = (
                conn.execute(
                    text(
                        "SELECT rule, previous_rule, epoch, state FROM write_ownership"
                        " WHERE group_name = :group"
                    ),
                    {"group": group},
                )
                .mappings()
                .first()
            )
        return dict(row) if row else {"rule": "legacy", "epoch": 0, "state": "active"}

    def backsync_written(self) -> int:
        """Decisions and fences back-sync wrote into legacy."""
        with self.legacy.connect() as conn:
            return int(
                conn.scalar(
                    text(
                        "SELECT (SELECT coalesce(sum(decisions + fences), 0)"
                        " FROM strangler_backsync_position)"
                        " + (SELECT coalesce(sum(decisions), 0) FROM strangler_backsync_lane)"
                    )
                )
                or 0
            )

    def backsync_decisions(self) -> int:
        """Decisions back-sync wrote into legacy."""
        with self.legacy.connect() as conn:
            return int(
                conn.scalar(
                    text("SELECT count(*) FROM strangler_backsync_applied WHERE kind = 'decision'")
                )
                or 0
            )

    def decisions_taken(self) -> int:
        """Distinct decisions of the new system in the outbox."""
        with self.new.connect() as conn:
            return int(
                conn.scalar(
                    text(
                        "SELECT count(DISTINCT (body::jsonb -> 'decision' ->> 'id')) FROM outbox"
                        " WHERE body::jsonb -> 'decision' <> 'null'::jsonb"
                    )
                )
                or 0
            )

    def decision_differences(self, limit: int = 10) -> list[dict[str, str]]:
        with self.new.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT route, sku, legacy, new, state FROM decision_difference"
                    " ORDER BY id LIMIT :limit"
                ),
                {"limit": limit},
            ).all()
        return [
            {"route": r, "sku": sku, "legacy": legacy, "new": new, "state": state}
            for r, sku, legacy, new, state in rows
        ]

    def captured_count(self) -> int:
        with self.legacy.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM strangler_change")) or 0)

    def confirmed_position(self) -> int:
        with self.legacy.connect() as conn:
            return int(
                conn.scalar(
                    text("SELECT coalesce(max(last_confirmed_pos), 0) FROM strangler_relay_state")
                )
                or 0
            )

    def relay_done(self) -> int | None:
        """The last position, once every captured change has one and the broker confirmed
        all of them; else None."""
        with self.legacy.connect() as conn:
            waiting, last = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE pos IS NULL), coalesce(max(pos), 0)"
                    " FROM strangler_change"
                )
            ).one()
        if waiting:
            return None
        return int(last) if self.confirmed_position() >= int(last) else None

    def applied_position(self) -> int:
        """The consumer's stored position (the run has one stream)."""
        with self.new.connect() as conn:
            return int(
                conn.scalar(text("SELECT coalesce(max(position), 0) FROM applied_change_position"))
                or 0
            )

    def routed_position(self) -> int:
        """How far the shard router routed the stream (the run has one)."""
        with self.new.connect() as conn:
            return int(
                conn.scalar(text("SELECT coalesce(max(position), 0) FROM shard_route_position"))
                or 0
            )

    def shard_positions(self) -> dict[str, int]:
        """Each shard stream's last position given out by the router."""
        with self.new.connect() as conn:
            rows = conn.execute(text("SELECT stream, position FROM shard_route_seq")).all()
        return {str(stream): int(position) for stream, position in rows}

    def shards_applied(self, positions: dict[str, int]) -> bool:
        """Every shard stream applied at least up to its position in ``positions``."""
        with self.new.connect() as conn:
            rows = conn.execute(text("SELECT stream, position FROM applied_change_position")).all()
        applied = {str(stream): int(position) for stream, position in rows}
        return all(applied.get(stream, 0) >= position for stream, position in positions.items())

    def shards_caught_up(self) -> bool:
        """Every shard applied every change routed to it."""
        with self.new.connect() as conn:
            behind = conn.scalar(
                text(
                    "SELECT count(*) FROM shard_route_seq s LEFT JOIN applied_change_position a"
                    " ON a.stream = s.stream WHERE a.position IS NULL OR a.position <> s.position"
                )
            )
        return not behind

    def outbox_backlog(self) -> int:
        with self.new.connect() as conn:
            return int(
                conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) or 0
            )

    def install_id(self) -> str:
        with self.legacy.connect() as conn:
            return str(conn.scalar(text("SELECT install_id FROM strangler_relay_state")))

    def changes(self) -> list[dict[str, Any]]:
        """Every captured change; ``own``: its legacy transaction was opened by an origin
        marker (back-sync's echo of a decision, or a fence)."""
        with self.legacy.connect() as conn:
            rows = (
                conn.execute(
                    text(
                        "SELECT c.change_id, c.table_name, c.op, c.pos,"
                        " (c.before ->> 'qty_units') AS qty_before,"
                        " (c.after ->> 'qty_units') AS qty_after,"
                        " (o.table_name = 'strangler_origin' AND o.op = 'c') AS own"
                        " FROM strangler_change c"
                        " JOIN (SELECT txid, min(change_id) AS first FROM strangler_change"
                        "       GROUP BY txid) f ON f.txid = c.txid"
                        " JOIN strangler_change o ON o.change_id = f.first"
                        " ORDER BY c.change_id"
                    )
                )
                .mappings()
                .all()
            )
        return [dict(row) for row in rows]

    def outbox_bodies(self) -> list[dict[str, Any]]:
        with self.new.connect() as conn:
            rows = conn.execute(
                text("SELECT event_type, body, published_at FROM outbox ORDER BY id")
            ).all()
        return [
            {"type": kind, "published_at": published, **json.loads(body)}
            for kind, body, published in rows
        ]

    def outbox_causes(self) -> Counter[str]:
        """Domain events the consumer raised for legacy's changes, by cause."""
        return Counter(
            body["legacy_change"] for body in self.outbox_bodies() if body.get("legacy_change")
        )

    def shadow_results(self) -> list[tuple[str, str]]:
        """(path, outcome) of every shadow comparison the facade recorded."""
        with self.new.connect() as conn:
            rows = conn.execute(
                text("SELECT path, outcome FROM facade_shadow_result WHERE kind = 'shadow'")
            ).all()
        return [(str(path), str(outcome)) for path, outcome in rows]

    def order_ids(self) -> list[str]:
        """Every order legacy knows."""
        with self.legacy.connect() as conn:
            return sorted(
                conn.execute(text("SELECT DISTINCT order_no FROM cust_order_line")).scalars()
            )

    def dead_letter_rows(self) -> list[str | None]:
        with self.new.connect() as conn:
            return list(conn.execute(text("SELECT message_id FROM dead_letter")).scalars())


def drain(amqp_url: str, queue: str, timeout: float = 300) -> list[broker.Message]:
    """Take (and ack) every message in ``queue`` until it is empty. A broker outage on the
    way (the machine's other test runs restart it too) means reconnecting: what was taken
    is kept, and deliveries not acked yet come again (counted twice, same message ids)."""
    messages: list[broker.Message] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = broker.connect(amqp_url)
            try:
                while deliveries := connection.get_batch(queue, 2000, 1.0):
                    messages.extend(d.message for d in deliveries)
                    connection.ack(deliveries[-1].delivery_tag, multiple=True)
                if connection.queue_depth(queue) == 0:
                    return messages
            finally:
                connection.close()
        except broker.BrokerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)  # back off before reconnecting


def queue_counts(queue: str, node: str | None = None) -> tuple[int, int]:
    """(ready, unacknowledged) messages of ``queue``, as RabbitMQ (``node``) counts them."""
    out = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            *(("-n", node) if node else ()),
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"queue {queue} not found in rabbitmqctl list_queues")


@dataclass
class Verdict:
    captured: int = 0
    captured_by_kind: dict[str, int] = field(default_factory=dict)
    captured_own: int = 0  # changes of transactions opened by an origin marker
    published: int = 0
    deliveries_to_audit: int = 0
    applied: int = 0
    effects_expected: int = 0
    effects_recorded: int = 0
    lost_unpublished: int = 0
    lost_unapplied: int = 0
    lost_effects: int = 0
    double_applied: int = 0
    phantom_published: int = 0
    orders_checked: int = 0
    orders_matching: int = 0
    parity: float = 0.0
    verify_exit: int | None = None
    verify_line: str = ""
    poison_injected: int = 0
    dead_lettered: int = 0
    dead_letters_unexpected: int = 0
    dead_letter_duplicates: int = 0  # a poison message dead-lettered again (at least once)
    poison_missing: int = 0
    unrouted: int = 0
    facade_bad_requests: int = 0
    facade_bad_refused: int = 0
    facade_good_requests: int = 0
    facade_good_answered: int = 0
    facade_shadow_recorded: int = 0
    facade_shadow_matching: int = 0
    facade_shadow_unexpected: int = 0  # results beyond one per good request, or for a bad path
    facade_shadow_missing: int = 0  # good requests without their result
    facade_log_problems: int = 0
    facade_new_system_unavailable: int = 0  # writes answered 502: the new database was down
    queue_ready: int = 0
    queue_unacked: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.lost_unpublished + self.lost_unapplied + self.lost_effects

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "lost": self.lost}


def judge_changes(
    verdict: Verdict,
    store: Store,
    audit: list[broker.Message],
    applied_position: int,
) -> None:
    """Fill the counts of captured / published / applied / effects into ``verdict``."""
    install = store.install_id()
    changes = store.changes()
    ids = {f"{install}:{c['change_id']}": c for c in changes}
    verdict.captured = len(changes)
    verdict.captured_by_kind = dict(
        sorted(Counter(f"{c['table_name']}.{c['op']}" for c in changes).items())
    )

    published = Counter(
        m.message_id
        for m in audit
        if m.type == "change"
        and not m.message_id.startswith("poison-")
        and m.headers.get("x-chaos") != "poison"
    )  # the forged change
    verdict.published = len(published)
    verdict.deliveries_to_audit = sum(published.values())
    unpublished = sorted(set(ids) - set(published))
    phantom = sorted(set(published) - set(ids))
    verdict.lost_unpublished = len(unpublished)
    verdict.phantom_published = len(phantom)

    unapplied = [i for i, c in ids.items() if c["pos"] is None or c["pos"] > applied_position]
    verdict.applied = len(ids) - len(unapplied)
    verdict.lost_unapplied = len(unapplied)

    # the system's own transactions (back-sync's echoes, fences) raise nothing
    verdict.captured_own = sum(1 for c in changes if c["own"])
    expected = {i for i, c in ids.items() if _has_effect(c) and not c["own"]}
    causes = store.outbox_causes()
    verdict.effects_expected = len(expected)
    verdict.effects_recorded = sum(causes.values())
    missing = sorted(expected - set(causes))
    doubled = sorted(str(cause) for cause, n in causes.items() if n > 1)
    stray = sorted(str(cause) for cause in set(causes) - expected)
    verdict.lost_effects = len(missing)
    verdict.double_applied = sum(n - 1 for n in causes.values() if n > 1) + sum(
        causes[cause] for cause in set(causes) - expected
    )
    verdict.examples = {
        name: values[:5]
        for name, values in (
            ("unpublished", unpublished),
            ("phantom", phantom),
            ("unapplied", unapplied),
            ("effects_missing", missing),
            ("effects_doubled", doubled),
            ("effects_stray", stray),
        )
        if values
    }


def _has_effect(change: dict[str, Any]) -> bool:
    table, op = change["table_name"], change["op"]
    if table == "lot_allocation":
        return op in ("c", "d")
    if table == "stock_lot" and op == "c":
        return True
    return bool(table == "stock_lot" and op == "u" and change["qty_before"] != change["qty_after"])


def judge_verify(verdict: Verdict, result: subprocess.CompletedProcess[str]) -> None:
    verdict.verify_exit = result.returncode
    match = _VERIFY_LINE.search(result.stdout)
    assert match, f"no summary line from strangler verify:\n{result.stdout}\n{result.stderr}"
    verdict.verify_line = match.group(0)
    checked, matching = int(match.group(1)), int(match.group(2))
    verdict.orders_checked, verdict.orders_matching = checked, matching
    verdict.parity = round(100.0 * matching / checked, 4) if checked else 0.0
    if result.returncode != 0:
        verdict.examples["verify"] = result.stdout.splitlines()[1:6]


def judge_dead_letters(verdict: Verdict, poison_ids: set[str], dlq: list[broker.Message]) -> None:
    got = Counter(m.message_id for m in dlq)
    verdict.poison_injected = len(poison_ids)
    verdict.dead_lettered = sum(got.values())
    unexpected = sorted(i for i in got if i not in poison_ids)
    verdict.dead_letters_unexpected = sum(got[i] for i in unexpected)
    verdict.dead_letter_duplicates = sum(n - 1 for n in got.values() if n > 1)
    verdict.poison_missing = len(poison_ids - set(got))
    if unexpected:
        verdict.examples["dead_letters_unexpected"] = unexpected[:5]


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", re.MULTILINE)


def _log_records(log: str) -> list[str]:
    """The log's records: a line that starts with a timestamp and the lines after it."""
    starts = [m.start() for m in _LOG_RECORD.finditer(log)]
    return [log[a:b] for a, b in zip(starts, [*starts[1:], len(log)], strict=True)]


def _new_system_unavailable(record: str) -> bool:
    """A write the new system could not take because its database was unreachable: the
    facade answers 502 and logs the failure with its traceback (not a problem)."""
    header = record.split("\n", 1)[0]
    return "not retried on legacy" in header and "OperationalError" in record


def judge_facade(
    verdict: Verdict, rounds: list[FacadeRound], results: list[tuple[str, str]], log: str
) -> None:
    """The facade's answers in every round, its shadow results against the good requests
    sent, and its log."""
    verdict.facade_bad_requests = sum(r.bad for r in rounds)
    verdict.facade_bad_refused = sum(r.bad_refused for r in rounds)
    verdict.facade_good_requests = sum(len(r.good) for r in rounds)
    verdict.facade_good_answered = sum(r.good_answered for r in rounds)
    sent = Counter(path for r in rounds for path in r.good)
    recorded = Counter(path for path, _ in results)
    verdict.facade_shadow_recorded = len(results)
    verdict.facade_shadow_matching = sum(
        1 for path, outcome in results if outcome == "match" and path in sent
    )
    verdict.facade_shadow_unexpected = sum((recorded - sent).values())
    verdict.facade_shadow_missing = sum((sent - recorded).values())
    refused_lines = sum(1 for line in log.splitlines() if "refused GET /allocations/" in line)
    records = _log_records(log)
    unavailable = [r for r in records if _new_system_unavailable(r)]
    verdict.facade_new_system_unavailable = len(unavailable)
    verdict.facade_log_problems = (
        sum(1 for r in records if "Traceback" in r and r not in unavailable)
        + log.count("\x00")
        + log.count("\x1b")
        + abs(refused_lines - sum(r.refused_by_facade for r in rounds))
    )
    problems = [p for r in rounds for p in r.problems]
    mismatched = [f"{path}: {outcome}" for path, outcome in results if outcome != "match"]
    for name, values in (
        ("facade_answers", problems),
        ("facade_shadow_not_matching", mismatched),
        ("facade_shadow_unexpected", sorted(recorded - sent)),
        ("facade_shadow_missing", sorted(sent - recorded)),
    ):
        if values:
            verdict.examples[name] = [str(v) for v in values[:5]]
