"""The ``legacy.cdc`` envelope: what a change event and a heartbeat are, checked.

:func:`parse_message` tells a heartbeat (by AMQP ``type`` or its body's ``type``) from
a change, and :func:`parse_change` checks one change envelope (Debezium-shaped, see
``docs/schemas/legacy-cdc-change.schema.json``) and returns it as a
:class:`LegacyChange`: which row of which table, its before and after images, and
where it stands in its stream. Parsing is pure: any failure is the message's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


def parse_message(
    body: bytes | str, message_id: str | None = None, message_type: str | None = None
) -> LegacyChange | Heartbeat:
    """A change, or a heartbeat (by AMQP ``type`` or the body's ``type``).

    Raises :class:`MalformedChange` for anything else.
    """
    if message_type == HEARTBEAT:
        try:
            decoded = _decode(body)
        except MalformedChange:
            decoded = None
        return _heartbeat(decoded)
    decoded = _decode(body)
    if isinstance(decoded, Mapping) and decoded.get("type") == HEARTBEAT:
        return _heartbeat(decoded)
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
    seq = source.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_POSITION:
        raise MalformedChange(f"source.seq must be an integer from 0 to 2^63-1, got {seq!r}")
    for name, value in (("source.name", source.get("name")), ("source.db", source.get("db"))):
        if value is not None and not isinstance(value, str | int):
            raise MalformedChange(f"{name} must be a string, got {type(value).__name__}")
    if any("\x00" in str(part) for part in (table, source.get("name"), source.get("db"))):
        raise MalformedChange("source.table, source.name and source.db must not hold NUL")
    if message_id is not None and ("\x00" in message_id or len(message_id) > MAX_ID_LENGTH):
        raise MalformedChange(f"message_id must be at most {MAX_ID_LENGTH} characters, no NUL")
    before = _image(envelope, "before")
    after = _image(envelope, "after")
    if op == "d" and before is None:
        raise MalformedChange("a delete needs a before image")
    if op != "d" and after is None:
        raise MalformedChange(f"op {op!r} needs an after image")
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
        **_transaction(envelope.get("transaction")),
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
