"""The ``legacy.cdc`` envelope: what a change event and a heartbeat are, checked.

:func:`parse_message` tells a heartbeat (by AMQP ``type`` or its body's ``type``) from
a change, and :func:`parse_change` checks one change envelope (Debezium-shaped, see
``docs/schemas/legacy-cdc-change.schema.json``) and returns it as a
:class:`LegacyChange`: which row of which table, its before and after images, and
where it stands in its stream. Parsing is pure: any failure is the message's own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from new_domain.ingest import debezium

OPS = ("c", "u", "d", "r")
MAX_POSITION = 2**63 - 1  # positions are stored as BIGINT
MAX_ID_LENGTH = 255
HEARTBEAT = "heartbeat"


class MalformedChange(ValueError):
    """The message is not a legacy change envelope this layer can read."""


@dataclass(frozen=True)
class LegacyChange:
    """One parsed change: ``op`` on a row of ``table`` at ``position`` in ``stream``.

    ``source`` is ``<server name>/<database>``; ``committed_at_ms`` the capture time of
    the change in legacy; ``ends_transaction`` is False only for a change that the
    ``transaction`` block marks as not the last one of its legacy transaction;
    ``dense`` is True when the stream's positions have no gaps (the bridge's), so a
    change must come at the position after the last one applied; ``transaction_id``
    and ``transaction_order`` (1 for its first change) place it in its legacy
    transaction, when the ``transaction`` block says.
    """

    op: str
    table: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    stream: str
    position: int
    message_id: str | None = None
    source: str = "-/-"
    committed_at_ms: int | None = None
    ends_transaction: bool = True
    dense: bool = False
    transaction_id: str | None = None
    transaction_order: int | None = None
    debezium: bool = False
    snapshot_mark: str | None = None
    legacy_id: str | None = None
    shard: tuple[int, int] | None = None  # (index, count) of a shard router's copy

    @property
    def cause(self) -> str | None:
        """The id of the legacy change itself: the message id in the bridge's stream, also
        for a copy the shard router re-published (``legacy_id``)."""
        return self.legacy_id or self.message_id

    @property
    def row(self) -> Mapping[str, Any]:
        """The row image the change is about: ``after``, or ``before`` for a delete."""
        image = self.before if self.op == "d" else self.after
        assert image is not None  # parse_change guarantees it
        return image


@dataclass(frozen=True)
class Heartbeat:
    """The bridge had nothing to publish at ``ts_ms``; ``last_commit_ts_ms`` is the capture
    time of the newest change it ever captured."""

    source: str
    ts_ms: int | None
    last_commit_ts_ms: int | None


@dataclass(frozen=True)
class TransactionBoundary:
    """Debezium's BEGIN or END of a legacy transaction (``provide.transaction.metadata``):
    END says how many change events the transaction had (``event_count``)."""

    status: str
    transaction_id: str
    event_count: int | None


@dataclass(frozen=True)
class Tombstone:
    """What follows a delete in Debezium's stream (a null value, for Kafka's log
    compaction): nothing to apply."""


Parsed = LegacyChange | Heartbeat | TransactionBoundary | Tombstone
"""Whatever a message on the consumer's queue can be."""

BOUNDARIES = ("BEGIN", "END")
HEARTBEAT_TOPIC = "__debezium-heartbeat."
ANY_DATABASE = "*"
"""The database part of a Debezium heartbeat's source: it names none (see
:func:`heartbeat_sources`)."""


def parse_message(
    body: bytes | str,
    message_id: str | None = None,
    message_type: str | None = None,
    *,
    tombstone: bytes | None = None,
    topic: str | None = None,
) -> Parsed:
    """A change, a heartbeat, a transaction boundary or a tombstone (an empty body,
    ``null``, or the placeholder ``tombstone`` a sink sends for a null value).
    ``topic`` (the exchange or routing key it came by) names the connector of a
    Debezium heartbeat when it is ``__debezium-heartbeat.<topic.prefix>``.

    Raises :class:`MalformedChange` for anything else.
    """
    if message_type == HEARTBEAT:
        try:
            decoded = _decode(body)
        except MalformedChange:
            decoded = None
        return _heartbeat(decoded)
    raw = body.encode() if isinstance(body, str) else body
    if not raw.strip() or raw.strip() == b"null" or (tombstone and raw == tombstone):
        return Tombstone()
    decoded = _decode(body)
    if isinstance(decoded, Mapping):
        if set(decoded) == {"schema", "payload"}:  # Debezium's JSON with schemas enabled
            decoded = decoded["payload"]
            if decoded is None:
                return Tombstone()
        if decoded.get("type") == HEARTBEAT:
            return _heartbeat(decoded)
        if "op" not in decoded and decoded.get("status") in BOUNDARIES:
            return _boundary(decoded)
        if set(decoded) == {"ts_ms"}:  # Debezium's heartbeat
            return Heartbeat(_debezium_heartbeat_source(topic), _ms(decoded["ts_ms"]), None)
    return parse_change(decoded, message_id)


def parse_change(
    body: bytes | str | Mapping[str, Any], message_id: str | None = None
) -> LegacyChange:
    """Check a ``legacy.cdc`` envelope and return it parsed; :class:`MalformedChange` if not.

    The stream of a change is ``<source.name>/<source.db>``, plus the capture install id
    when ``message_id`` has the bridge's ``<install_id>:<change_id>`` form: positions
    restart with a new install, so they are compared only within one install.
    """
    envelope = _decode(body) if isinstance(body, bytes | str) else body
    if not isinstance(envelope, Mapping):
        raise MalformedChange(f"envelope must be a JSON object, got {type(envelope).__name__}")
    op = envelope.get("op")
    if op not in OPS:
        raise MalformedChange(f"op must be one of {', '.join(OPS)}, got {op!r}")
    source = envelope.get("source")
    if not isinstance(source, Mapping):
        raise MalformedChange("source must be an object")
    table = source.get("table")
    if not isinstance(table, str) or not table:
        raise MalformedChange("source.table must be a non-empty string")
    if debezium.is_debezium(source):
        return _debezium_change(envelope, op, source, table, message_id)
    seq = source.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_POSITION:
        raise MalformedChange(f"source.seq must be an integer from 0 to 2^63-1, got {seq!r}")
    _check_names(source, table, message_id)
    before, after = _images(envelope, op)
    stream, dense = _stream(source, message_id, op)
    return LegacyChange(
        op,
        table,
        before,
        after,
        stream,
        seq,
        message_id,
        source=_source_key(source),
        committed_at_ms=_ms(source.get("ts_ms")),
        ends_transaction=_ends_transaction(envelope.get("transaction")),
        dense=dense,
        legacy_id=_routed_from(source),
        shard=_shard(source),
        **_transaction(envelope.get("transaction")),
    )


def _debezium_change(
    envelope: Mapping[str, Any],
    op: str,
    source: Mapping[str, Any],
    table: str,
    message_id: str | None,
) -> LegacyChange:
    """Debezium's own envelope: the position from the connector's log coordinates
    (:mod:`~new_domain.ingest.debezium`), never dense; a message id derived from the
    stream and the position when the sink sent none; a change that carries a
    ``transaction`` block waits for the transaction's END to be known as its last."""
    _check_names(source, table, message_id)
    block = envelope.get("transaction")
    try:
        found = debezium.coordinates(source, op, block)
    except debezium.DebeziumFormatError as error:
        raise MalformedChange(str(error)) from None
    before, after = _images(envelope, op)
    stream = _source_key(source)
    in_transaction = isinstance(block, Mapping) and not found.snapshot
    order = block.get("total_order") if isinstance(block, Mapping) else None
    committed = _ms(source.get("ts_ms"))
    if committed is None and _ms(source.get("ts_us")) is not None:
        committed = source["ts_us"] // 1000
    return LegacyChange(
        op,
        table,
        before,
        after,
        stream,
        found.position,
        message_id or _derived_id(stream, found.position),
        source=stream,
        committed_at_ms=committed,
        ends_transaction=not in_transaction,
        dense=False,
        transaction_id=found.transaction_id,
        transaction_order=(
            order
            if in_transaction
            and isinstance(order, int)
            and not isinstance(order, bool)
            and order >= 1
            else None
        ),
        debezium=True,
        snapshot_mark=found.mark,
    )


def _derived_id(stream: str, position: int) -> str:
    """A stable id for a message that came without one: its stream and position."""
    derived = f"dbz:{stream}:{position}"
    if len(derived) <= MAX_ID_LENGTH:
        return derived
    return f"dbz:sha256:{hashlib.sha256(derived.encode()).hexdigest()}"


def _check_names(source: Mapping[str, Any], table: str, message_id: str | None) -> None:
    for name, value in (("source.name", source.get("name")), ("source.db", source.get("db"))):
        if value is not None and not isinstance(value, str | int):
            raise MalformedChange(f"{name} must be a string, got {type(value).__name__}")
    if any("\x00" in str(part) for part in (table, source.get("name"), source.get("db"))):
        raise MalformedChange("source.table, source.name and source.db must not hold NUL")
    if message_id is not None and ("\x00" in message_id or len(message_id) > MAX_ID_LENGTH):
        raise MalformedChange(f"message_id must be at most {MAX_ID_LENGTH} characters, no NUL")


def _images(
    envelope: Mapping[str, Any], op: str
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    before = _image(envelope, "before")
    after = _image(envelope, "after")
    if op == "d" and before is None:
        raise MalformedChange("a delete needs a before image")
    if op != "d" and after is None:
        raise MalformedChange(f"op {op!r} needs an after image")
    return before, after


def _boundary(body: Mapping[str, Any]) -> TransactionBoundary:
    try:
        transaction = debezium.transaction_key(body.get("id"))
    except debezium.DebeziumFormatError as error:
        raise MalformedChange(f"transaction {body.get('status')}: {error}") from None
    count = body.get("event_count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise MalformedChange(f"event_count must be a non-negative integer, got {count!r}")
    return TransactionBoundary(str(body["status"]), transaction, count)


def _debezium_heartbeat_source(topic: str | None) -> str:
    """``<topic.prefix>/*`` when the topic names the connector, else ``*/*``."""
    name = ANY_DATABASE
    if topic and HEARTBEAT_TOPIC in topic:
        name = topic.rpartition(HEARTBEAT_TOPIC)[2] or ANY_DATABASE
    return f"{name}/{ANY_DATABASE}"


def heartbeat_sources(heartbeat: Heartbeat, known: Callable[[], Iterable[str]]) -> list[str]:
    """The sources a heartbeat speaks for: its own, or for a Debezium heartbeat (which
    names no database) every ``known()`` source of its connector (of any, when the topic
    did not say which)."""
    name, _, database = heartbeat.source.partition("/")
    if database != ANY_DATABASE:
        return [heartbeat.source]
    return sorted(
        source
        for source in set(known())
        if name == ANY_DATABASE or source.partition("/")[0] == name
    )


def _decode(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedChange(f"body is not JSON: {exc}") from None


def _image(envelope: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    image = envelope.get(key)
    if image is not None and not isinstance(image, Mapping):
        raise MalformedChange(f"{key} must be an object or null")
    return image


def _source_key(source: Mapping[str, Any]) -> str:
    return f"{source.get('name') or '-'}/{source.get('db') or '-'}"


def _stream(source: Mapping[str, Any], message_id: str | None, op: str) -> tuple[str, bool]:
    """``<name>/<db>``, plus the capture install taken from the bridge's message id:
    ``<install_id>:<change_id>`` for changes, ``<install_id>:...`` for snapshot reads;
    and whether the stream's positions are dense (the bridge's are: 1, 2, 3, ...)."""
    stream = _source_key(source)
    if not message_id or ":" not in message_id:
        return stream, False
    install = message_id.partition(":")[0]
    change_id = source.get("change_id")
    by_change = change_id is not None and message_id.rpartition(":")[2] == str(change_id)
    snapshot = op == "r" or source.get("snapshot") not in (None, False)
    if install and (by_change or snapshot):
        return f"{stream}/{install}", True
    return stream, False


def _routed_from(source: Mapping[str, Any]) -> str | None:
    """The bridge's message id of a change the shard router re-published, if it is one."""
    shard = source.get("shard")
    found = shard.get("message_id") if isinstance(shard, Mapping) else None
    if isinstance(found, str) and found and "\x00" not in found and len(found) <= MAX_ID_LENGTH:
        return found
    return None


def _shard(source: Mapping[str, Any]) -> tuple[int, int] | None:
    """(index, count) of a change the shard router re-published, if it is one."""
    shard = source.get("shard")
    if not isinstance(shard, Mapping):
        return None
    index, count = shard.get("index"), shard.get("count")
    if type(index) is not int or type(count) is not int:
        raise MalformedChange("source.shard.index and .count must be integers")
    if not 0 <= index < count <= 256:
        raise MalformedChange(f"source.shard {index}/{count} is not a shard")
    return index, count


def _ends_transaction(block: Any) -> bool:
    if not isinstance(block, Mapping):
        return True
    return block.get("last") is not False


def _transaction(block: Any) -> dict[str, Any]:
    """The legacy transaction's id and the change's place in it (1 first), if given."""
    if not isinstance(block, Mapping):
        return {}
    found: dict[str, Any] = {}
    if isinstance(block.get("id"), str | int) and not isinstance(block.get("id"), bool):
        found["transaction_id"] = str(block["id"])
    order = block.get("total_order")
    if isinstance(order, int) and not isinstance(order, bool) and order >= 1:
        found["transaction_order"] = order
    return found


def _heartbeat(body: Any) -> Heartbeat:
    if not isinstance(body, Mapping):
        return Heartbeat("-/-", None, None)
    source = body.get("source")
    key = _source_key(source) if isinstance(source, Mapping) else "-/-"
    return Heartbeat(key, _ms(body.get("ts_ms")), _ms(body.get("last_commit_ts_ms")))


def _ms(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
