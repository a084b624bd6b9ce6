"""The anti-corruption layer: legacy change events in, domain commands out.

Everything that knows the legacy shop's table and column names, or its integer keys,
lives here. A :class:`Translator` per captured table turns a parsed change into the
commands (and, for facts the model cannot take, ``LegacyInvariantViolated`` events)
the message bus handles, and names the legacy keys its rows refer to, by column, so
that a batch's keys are read ahead in one round trip. What a translator must remember
between changes (which sku a ``prod_id`` is, which batch a ``lot_id`` is, which order
line a ``line_id`` is) goes to the legacy key maps of the unit of work, in the same
transaction as the effect. :data:`LEGACY_SHOP` is the registry of the legacy shop's
four tables; capturing one more table is one more entry (docs/architecture.md).

Row images from PostgreSQL (``to_jsonb``) and SQLite (``json_object``) both work:
integers may arrive as digit strings, dates as ``YYYY-MM-DD`` (or a timestamp, or
Debezium's days since the epoch).

Snapshot reads (op ``r``) are upserts: a row the new domain knows already is brought
in line (a lot's quantity set, an allocation moved) and nothing happens when it
already matches.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from new_domain.domain import commands, events
from new_domain.ingest.envelope import LegacyChange, MalformedChange
from new_domain.ingest.ports import LINE, LOT, PRODUCT, AbstractLegacyKeys, LegacyLine, LegacyLot

if TYPE_CHECKING:
    from new_domain.service_layer.messagebus import Message

logger = logging.getLogger(__name__)


class UnknownLegacyRow(LookupError):
    """A change refers to a legacy row whose creation the new domain never saw."""


Translate = Callable[[LegacyChange, AbstractLegacyKeys], "list[Message]"]


@dataclass(frozen=True)
class Translator:
    """How the changes of one legacy ``table`` become domain messages: ``translate``, and
    the legacy keys its row images hold (``keys``: column -> key kind)."""

    table: str
    translate: Translate
    keys: Mapping[str, str] = field(default_factory=dict)


class Translators:
    """The registry: one :class:`Translator` per captured table. Changes of a table
    without one are ignored (logged at debug level)."""

    def __init__(self, *entries: Translator) -> None:
        self._by_table = {entry.table: entry for entry in entries}

    def with_table(self, entry: Translator) -> Translators:
        """A registry with ``entry`` added (or replacing the table's entry)."""
        return Translators(*self._by_table.values(), entry)

    @property
    def tables(self) -> list[str]:
        return sorted(self._by_table)

    def translate(self, change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
        """The domain messages for ``change``; updates ``keys`` as a side effect.

        Raises :class:`MalformedChange` for a row image missing a needed column and
        :class:`UnknownLegacyRow` for a reference to a row never seen.
        """
        entry = self._by_table.get(change.table)
        if entry is None:
            logger.debug("ignoring change to table %s", change.table)
            return []
        return entry.translate(change, keys)

    def referenced_keys(self, changes: Iterable[LegacyChange]) -> dict[str, set[int]]:
        """The legacy ids, by key kind, that ``changes`` refer to (for reading the key maps
        ahead; unreadable values are left to :meth:`translate` to report)."""
        wanted: dict[str, set[int]] = {}
        for change in changes:
            entry = self._by_table.get(change.table)
            if entry is None:
                continue
            for image in (change.before, change.after):
                for column, kind in entry.keys.items():
                    value = _key(image, column)
                    if value is not None:
                        wanted.setdefault(kind, set()).add(value)
        return wanted


def _key(image: Mapping[str, Any] | None, column: str) -> int | None:
    value = None if image is None else image.get(column)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    return None


def _product_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    prod_id = int_column(change, change.row, "prod_id")
    known = keys.product_sku(prod_id)
    if change.op == "d":
        return [_unsupported(known, f"product {known or prod_id} deleted in legacy; kept here")]
    sku = str_column(change, change.row, "prod_code")
    if known is None:
        keys.remember_product(prod_id, sku)
        return []
    if known != sku:
        return [_unsupported(known, f"product {known} renamed to {sku} in legacy; kept as {known}")]
    return []


def _lot_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    row = change.row
    lot_id = int_column(change, row, "lot_id")
    known = keys.lot(lot_id)
    if change.op == "d":
        name = known.batchref if known else f"lot {lot_id}"
        return [
            _unsupported(known.sku if known else None, f"batch {name} deleted in legacy; kept here")
        ]
    qty = int_column(change, row, "qty_units")
    if known is None:
        if change.op == "u":
            raise UnknownLegacyRow(f"stock_lot {lot_id} updated but its creation was never seen")
        sku = _sku_of(change, keys, int_column(change, row, "prod_id"))
        ref = str_column(change, row, "lot_ref")
        keys.remember_lot(lot_id, LegacyLot(ref, sku))
        return [commands.CreateBatch(ref, sku, qty, date_column(change, row, "arrival_date"))]
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
        if "qty_units" in before and int_column(change, before, "qty_units") == qty:
            return messages
    messages.append(commands.ChangeBatchQuantity(known.batchref, qty))
    return messages


def _line_change(change: LegacyChange, keys: AbstractLegacyKeys) -> list[Message]:
    line_id = int_column(change, change.row, "line_id")
    if change.op == "d":
        keys.forget_line(line_id)
        return []
    row = change.row
    sku = _sku_of(change, keys, int_column(change, row, "prod_id"))
    keys.remember_line(
        line_id,
        LegacyLine(str_column(change, row, "order_no"), sku, int_column(change, row, "qty_units")),
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
    line_id = int_column(change, row, "line_id")
    line = keys.line(line_id)
    if line is None:
        raise UnknownLegacyRow(f"{change.table} refers to cust_order_line {line_id}, never seen")
    return line


def _lot_of(change: LegacyChange, keys: AbstractLegacyKeys, row: Mapping[str, Any]) -> LegacyLot:
    lot_id = int_column(change, row, "lot_id")
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


LEGACY_SHOP = Translators(
    Translator("prod_catalog", _product_change, keys={"prod_id": PRODUCT}),
    Translator("stock_lot", _lot_change, keys={"lot_id": LOT, "prod_id": PRODUCT}),
    Translator("cust_order_line", _line_change, keys={"line_id": LINE, "prod_id": PRODUCT}),
    Translator("lot_allocation", _allocation_change, keys={"lot_id": LOT, "line_id": LINE}),
)
"""The legacy shop's captured tables."""


# -- row-image parsing --------------------------------------------------------------------


_INT = re.compile(r"-?\d+")


def int_column(change: LegacyChange, row: Mapping[str, Any], column: str) -> int:
    value = row.get(column)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    raise MalformedChange(f"{change.table}.{column} must be an integer, got {value!r}")


def str_column(change: LegacyChange, row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value:
        raise MalformedChange(f"{change.table}.{column} must be a non-empty string, got {value!r}")
    return value


def date_column(change: LegacyChange, row: Mapping[str, Any], column: str) -> date | None:
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
