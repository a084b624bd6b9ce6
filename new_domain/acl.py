"""Anti-corruption layer: legacy change events in, domain commands out.

Everything that knows the legacy shop's table and column names, or its integer keys,
lives here. :func:`parse_change` checks one ``legacy.cdc`` envelope (Debezium-shaped,
see ``docs/schemas/legacy-cdc-change.schema.json``) and :func:`translate` turns it into
the commands (and, for facts the model cannot take, ``LegacyInvariantViolated``
events) the message bus handles. What it must remember between changes (which sku a
``prod_id`` is, which batch a ``lot_id`` is, which order line a ``line_id`` is) goes
to the legacy key maps of the unit of work, in the same transaction as the effect.

Row images from PostgreSQL (``to_jsonb``) and SQLite (``json_object``) both work:
integers may arrive as digit strings, dates as ``YYYY-MM-DD`` (or a timestamp, or
Debezium's days since the epoch).

Snapshot reads (op ``r``) are upserts: a row the new domain knows already is brought
in line (a lot's quantity set, an allocation moved) and nothing happens when it
already matches. Heartbeats (:func:`parse_message` tells them apart by AMQP type or by
their body's ``type``) carry no change, only how current the stream is.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from new_domain.adapters.legacy_keys import AbstractLegacyKeys, LegacyLine, LegacyLot
from new_domain.domain import commands, events
from new_domain.service_layer.messagebus import Message

logger = logging.getLogger(__name__)

OPS = ("c", "u", "d", "r")


class MalformedChange(ValueError):
    """The message is not a legacy change envelope this layer can read."""


class UnknownLegacyRow(LookupError):
    """A change refers to a legacy row whose creation the new domain never saw."""


HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class LegacyChange:
    """One parsed change: ``op`` on a row of ``table`` at ``position`` in ``stream``.

    ``source`` is ``<server name>/<database>``; ``committed_at_ms`` the capture time of
    the change in legacy; ``ends_transaction`` is False only for a change that the
    ``transaction`` block marks as not the last one of its legacy transaction.
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
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise MalformedChange(f"source.seq must be a non-negative integer, got {seq!r}")
    before = _image(envelope, "before")
    after = _image(envelope, "after")
    if op == "d" and before is None:
        raise MalformedChange("a delete needs a before image")
    if op != "d" and after is None:
        raise MalformedChange(f"op {op!r} needs an after image")
    return LegacyChange(
        op,
        table,
        before,
        after,
        _stream(source, message_id, op),
        seq,
        message_id,
        source=_source_key(source),
        committed_at_ms=_ms(source.get("ts_ms")),
        ends_transaction=_ends_transaction(envelope.get("transaction")),
    )


def referenced_keys(change: LegacyChange) -> tuple[set[int], set[int], set[int]]:
    """Legacy ``prod_id``s, ``lot_id``s and ``line_id``s ``change`` refers to (for reading
    the key maps ahead; unreadable values are left to :func:`translate` to report)."""
    prod_ids: set[int] = set()
    lot_ids: set[int] = set()
    line_ids: set[int] = set()
    wanted = {"prod_id": prod_ids, "lot_id": lot_ids, "line_id": line_ids}
    for image in (change.before, change.after):
        if image is None:
            continue
        for column, ids in wanted.items():
            value = image.get(column)
            if isinstance(value, int) and not isinstance(value, bool):
                ids.add(value)
            elif isinstance(value, str) and _INT.fullmatch(value.strip()):
                ids.add(int(value))
    return prod_ids, lot_ids, line_ids


def translate(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    """The domain messages for ``change``; updates ``keys`` as a side effect.

    Raises :class:`MalformedChange` for a row image missing a needed column and
    :class:`UnknownLegacyRow` for a reference to a row never seen.
    """
    translator = _TRANSLATORS.get(change.table)
    if translator is None:
        logger.debug("ignoring change to table %s", change.table)
        return []
    return translator(change, keys)


def _product_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    prod_id = _int(change, change.row, "prod_id")
    known = keys.product_sku(prod_id)
    if change.op == "d":
        return [_unsupported(known, f"product {known or prod_id} deleted in legacy; kept here")]
    sku = _str(change, change.row, "prod_code")
    if known is None:
        keys.remember_product(prod_id, sku)
        return []
    if known != sku:
        return [_unsupported(known, f"product {known} renamed to {sku} in legacy; kept as {known}")]
    return []


def _lot_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    row = change.row
    lot_id = _int(change, row, "lot_id")
    known = keys.lot(lot_id)
    if change.op == "d":
        name = known.batchref if known else f"lot {lot_id}"
        return [
            _unsupported(known.sku if known else None, f"batch {name} deleted in legacy; kept here")
        ]
    qty = _int(change, row, "qty_units")
    if known is None:
        if change.op == "u":
            raise UnknownLegacyRow(f"stock_lot {lot_id} updated but its creation was never seen")
        sku = _sku_of(change, keys, _int(change, row, "prod_id"))
        ref = _str(change, row, "lot_ref")
        keys.remember_lot(lot_id, LegacyLot(ref, sku))
        return [commands.CreateBatch(ref, sku, qty, _date(change, row, "arrival_date"))]
    messages: list[Message] = []
    before = change.before
    if before is not None and change.op == "u":
        for column in ("lot_ref", "prod_id", "arrival_date"):
            if column in before and before.get(column) != row.get(column):
                messages.append(
                    _unsupported(
                        known.sku,
                        f"batch {known.batchref}: {column} changed in legacy "
                        f"from {before.get(column)!r} to {row.get(column)!r}; not mirrored",
                    )
                )
        if "qty_units" in before and _int(change, before, "qty_units") == qty:
            return messages
    messages.append(commands.ChangeBatchQuantity(known.batchref, qty))
    return messages


def _line_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    line_id = _int(change, change.row, "line_id")
    if change.op == "d":
        keys.forget_line(line_id)
        return []
    row = change.row
    sku = _sku_of(change, keys, _int(change, row, "prod_id"))
    keys.remember_line(
        line_id, LegacyLine(_str(change, row, "order_no"), sku, _int(change, row, "qty_units"))
    )
    return []


def _allocation_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    if change.op == "r":
        line, lot = _line_of(change, keys, change.row), _lot_of(change, keys, change.row)
        return [commands.SyncAllocation(line.orderid, line.sku, line.qty, lot.batchref)]
    if change.op == "d":
        return [_deallocation(change, keys, change.row)]
    if change.op == "u":
        before = change.before
        if before is None:
            raise MalformedChange("lot_allocation update needs a before image")
        if all(before.get(k) == change.row.get(k) for k in ("lot_id", "line_id")):
            return []
        return [_deallocation(change, keys, before), _allocation(change, keys, change.row)]
    return [_allocation(change, keys, change.row)]


def _allocation(
    change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]
) -> commands.MirrorAllocation:
    line, lot = _line_of(change, keys, row), _lot_of(change, keys, row)
    return commands.MirrorAllocation(line.orderid, line.sku, line.qty, lot.batchref)


def _deallocation(
    change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]
) -> commands.MirrorDeallocation:
    line, lot = _line_of(change, keys, row), _lot_of(change, keys, row)
    return commands.MirrorDeallocation(line.orderid, line.sku, lot.batchref)


def _line_of(change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]) -> LegacyLine:
    line_id = _int(change, row, "line_id")
    line = keys.line(line_id)
    if line is None:
        raise UnknownLegacyRow(f"{change.table} refers to cust_order_line {line_id}, never seen")
    return line


def _lot_of(change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]) -> LegacyLot:
    lot_id = _int(change, row, "lot_id")
    lot = keys.lot(lot_id)
    if lot is None:
        raise UnknownLegacyRow(f"{change.table} refers to stock_lot {lot_id}, never seen")
    return lot


def _sku_of(change: LegacyChange, keys: AbstractLegacyKeys, prod_id: int) -> str:
    sku = keys.product_sku(prod_id)
    if sku is None:
        raise UnknownLegacyRow(f"{change.table} refers to prod_catalog {prod_id}, never seen")
    return sku


def _unsupported(sku: str | None, detail: str) -> events.LegacyInvariantViolated:
    return events.LegacyInvariantViolated("unsupported_change", sku, detail)


_TRANSLATORS: dict[str, Callable[[LegacyChange, AbstractLegacyKeys], list[Message]]] = {
    "prod_catalog": _product_change,
    "stock_lot": _lot_change,
    "cust_order_line": _line_change,
    "lot_allocation": _allocation_change,
}


# -- envelope and row-image parsing -------------------------------------------------------


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


def _stream(source: Mapping[str, Any], message_id: str | None, op: str) -> str:
    """``<name>/<db>``, plus the capture install taken from the bridge's message id:
    ``<install_id>:<change_id>`` for changes, ``<install_id>:...`` for snapshot reads."""
    stream = _source_key(source)
    if not message_id or ":" not in message_id:
        return stream
    install = message_id.partition(":")[0]
    change_id = source.get("change_id")
    by_change = change_id is not None and message_id.rpartition(":")[2] == str(change_id)
    snapshot = op == "r" or source.get("snapshot") not in (None, False)
    return f"{stream}/{install}" if install and (by_change or snapshot) else stream


def _ends_transaction(block: Any) -> bool:
    if not isinstance(block, Mapping):
        return True
    return block.get("last") is not False


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


_INT = re.compile(r"-?\d+")


def _int(change: LegacyChange, row: Mapping[str, Any], column: str) -> int:
    value = row.get(column)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    raise MalformedChange(f"{change.table}.{column} must be an integer, got {value!r}")


def _str(change: LegacyChange, row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value:
        raise MalformedChange(f"{change.table}.{column} must be a non-empty string, got {value!r}")
    return value


def _date(change: LegacyChange, row: Mapping[str, Any], column: str) -> date | None:
    value = row.get(column)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return date(1970, 1, 1) + timedelta(days=value)  # Debezium's io.debezium.time.Date
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    raise MalformedChange(f"{change.table}.{column} must be a YYYY-MM-DD date, got {value!r}")
