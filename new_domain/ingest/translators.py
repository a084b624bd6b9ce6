"""The anti-corruption layer's machinery: a registry of translators, one per legacy table.

A :class:`Translator` turns a parsed change of one legacy table into the commands (and,
for facts the model cannot take, ``LegacyInvariantViolated`` events) the message bus
handles, and names the legacy keys its row images hold, by column, so that a batch's
keys are read ahead in one round trip. A :class:`Recognizer` tells, from the shape of a
whole legacy transaction, which write decision legacy took in it (for decision
parity, :mod:`new_domain.ingest.decisions`). :class:`Translators` holds both for one
legacy system; the legacy shop's is :data:`new_domain.ingest.legacy_shop.LEGACY_SHOP`.

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


@dataclass(frozen=True)
class Translator:
    """How the changes of one legacy ``table`` become domain messages: ``translate``, and
    the legacy keys its row images hold (``keys``: column -> key kind)."""

    table: str
    translate: Translate
    keys: Mapping[str, str] = field(default_factory=dict)


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
    """The registry: one :class:`Translator` per captured table, and the recognisers of
    the legacy system's write decisions. Changes of a table without a translator are
    ignored (logged at debug level)."""

    def __init__(self, *entries: Translator, recognizers: Sequence[Recognizer] = ()) -> None:
        self._by_table = {entry.table: entry for entry in entries}
        self._recognizers = tuple(recognizers)

    def with_table(self, entry: Translator) -> Translators:
        """A registry with ``entry`` added (or replacing the table's entry)."""
        return Translators(*self._by_table.values(), entry, recognizers=self._recognizers)

    def with_recognizer(self, recognizer: Recognizer) -> Translators:
        """A registry with ``recognizer`` tried before the others."""
        return Translators(*self._by_table.values(), recognizers=(recognizer, *self._recognizers))

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
