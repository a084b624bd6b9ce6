"""The anti-corruption layer's machinery: a registry of translators, one per legacy table.

A :class:`Translator` turns a parsed change of one legacy table into the commands (and,
for facts the model cannot take, ``LegacyInvariantViolated`` events) the message bus
handles; it names the legacy keys its row images hold, by column, so that a batch's keys
are read ahead in one round trip, and says which product (sku) a row image is about, so
that the ownership guard can tell a change to a product the new system owns. A
:class:`Recognizer` tells, from the shape of a whole legacy transaction, which write
decision legacy took in it (for decision parity, :mod:`new_domain.ingest.decisions`).
:class:`Translators` holds both for one legacy system, with the name of the write group
its products belong to; the legacy shop's is
:data:`new_domain.ingest.legacy_shop.LEGACY_SHOP`.

The column readers (:func:`int_column`, :func:`str_column`, :func:`date_column`) accept
row images from PostgreSQL (``to_jsonb``), SQLite (``json_object``), MariaDB and
Debezium: integers may arrive as digit strings, dates as ``YYYY-MM-DD`` (or a
timestamp, or days since the epoch).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from new_domain.ingest.envelope import LegacyChange, MalformedChange
from new_domain.ingest.ports import AbstractLegacyKeys

if TYPE_CHECKING:
    from new_domain.ingest.decisions import LegacyDecision
    from new_domain.service_layer.messagebus import Message

logger = logging.getLogger(__name__)


class UnknownLegacyRow(LookupError):
    """A change refers to a legacy row whose creation the new domain never saw."""


Translate = Callable[[LegacyChange, AbstractLegacyKeys], "list[Message]"]

Complete = Callable[[LegacyChange, AbstractLegacyKeys], LegacyChange]
"""The change with a key-only before image completed from the key maps (Debezium's
deletes and updates under PostgreSQL's default REPLICA IDENTITY), or as it is."""

RowSku = Callable[[Mapping[str, Any], AbstractLegacyKeys], "str | None"]
"""The sku of the product a row image is about (the key maps give it for rows that only
hold a legacy id), or None when it cannot be told."""


@dataclass(frozen=True)
class Translator:
    """How the changes of one legacy ``table`` become domain messages: ``translate``, the
    legacy keys its row images hold (``keys``: column -> key kind), and ``sku``: which
    product a row image is about (None: the table's rows are about no product);
    ``complete`` fills in a before image that holds only the row's key."""

    table: str
    translate: Translate
    keys: Mapping[str, str] = field(default_factory=dict)
    sku: RowSku | None = None
    complete: Complete | None = None


Shape = frozenset[tuple[str, str]]
"""The kinds of change in one legacy transaction: its distinct (table, op) pairs."""


def shape(*kinds: str) -> Shape:
    """``shape("stock_lot.c", "prod_catalog.c")``: a transaction shape, written short."""
    return frozenset((kind.rpartition(".")[0], kind.rpartition(".")[2]) for kind in kinds)


Recognize = Callable[[Sequence[LegacyChange], AbstractLegacyKeys], "LegacyDecision | None"]


@dataclass(frozen=True)
class Recognizer:
    """Which write decision a legacy transaction of one of ``shapes`` took: ``recognize``
    reads it from the transaction's changes (and the key maps as they were before it),
    or returns None when the transaction is not one decision after all."""

    shapes: frozenset[Shape]
    recognize: Recognize


class Translators:
    """The registry: one :class:`Translator` per captured table, the recognisers of the
    legacy system's write decisions, and ``write_group``: the write group whose
    ownership decides who owns the products its tables hold (None: no guard). Changes
    of a table without a translator are ignored (logged at debug level)."""

    def __init__(
        self,
        *entries: Translator,
        recognizers: Sequence[Recognizer] = (),
        write_group: str | None = None,
    ) -> None:
        self._by_table = {entry.table: entry for entry in entries}
        self._recognizers = tuple(recognizers)
        self.write_group = write_group

    def with_table(self, entry: Translator) -> Translators:
        """A registry with ``entry`` added (or replacing the table's entry)."""
        return Translators(
            *self._by_table.values(),
            entry,
            recognizers=self._recognizers,
            write_group=self.write_group,
        )

    def with_recognizer(self, recognizer: Recognizer) -> Translators:
        """A registry with ``recognizer`` tried before the others."""
        return Translators(
            *self._by_table.values(),
            recognizers=(recognizer, *self._recognizers),
            write_group=self.write_group,
        )

    def skus(self, change: LegacyChange, keys: AbstractLegacyKeys) -> list[str]:
        """The skus of the products ``change`` touches (its before and after images), as
        the key maps know them before it; [] when its table holds no product or none
        can be told (translating it reports an unknown row)."""
        entry = self._by_table.get(change.table)
        if entry is None or entry.sku is None:
            return []
        found: list[str] = []
        for image in (change.before, change.after):
            sku = None if image is None else entry.sku(image, keys)
            if sku is not None and sku not in found:
                found.append(sku)
        return found

    def recognize(
        self, transaction: Sequence[LegacyChange], keys: AbstractLegacyKeys
    ) -> LegacyDecision | None:
        """The write decision a whole legacy transaction took, or None (unclassified).
        ``keys`` must be as they were before the transaction."""
        kinds = frozenset((change.table, change.op) for change in transaction)
        for recognizer in self._recognizers:
            if kinds in recognizer.shapes:
                try:
                    return recognizer.recognize(transaction, keys)
                except (MalformedChange, UnknownLegacyRow):
                    return None  # translating it reports the fault
        return None

    @property
    def tables(self) -> list[str]:
        return sorted(self._by_table)

    def complete(self, change: LegacyChange, keys: AbstractLegacyKeys) -> LegacyChange:
        """``change`` with its before image completed from the key maps as they are
        now, where its table's translator knows how (see :data:`Complete`)."""
        entry = self._by_table.get(change.table)
        if entry is None or entry.complete is None or change.op not in ("u", "d"):
            return change
        return entry.complete(change, keys)

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
    return None if image is None else int_value(image, column)


def int_value(row: Mapping[str, Any], column: str) -> int | None:
    """The row's integer in ``column`` (a digit string too), else None."""
    value = row.get(column)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    return None


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
