"""The origin marker: the kit's own legacy table, ``strangler_origin`` (docs/write-path.md).

Back-sync writes a row of ``strangler_origin`` first in every legacy transaction it
commits: ``kind`` ``decision`` (the rows after it are the new system's decision written
the way legacy writes it: an **echo**) or ``fence`` (the write group ``group_name``'s
ownership ``epoch`` came back through legacy). The table belongs to the kit, not to one
legacy system's anti-corruption layer: whatever the legacy application, its changes are
read here and never by a translator, so they are never an unknown table's.

Only an insert that is the first change of its legacy transaction is a marker; any
other change of the table (an update, a delete, a snapshot read) means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from new_domain.ingest.envelope import LegacyChange, MalformedChange
from new_domain.ingest.translators import int_column, str_column

ORIGIN_TABLE = "strangler_origin"
DECISION, FENCE = "decision", "fence"

SUMMARY_LENGTH = 1000
"""Characters the marker's ``summary`` column holds: back-sync writes a longer summary
cut to 999 of them and an ellipsis (a quantity cut that moved many lines)."""


def as_marked(summary: str) -> str:
    """``summary`` as a marker holds it (cut like back-sync cuts it)."""
    if len(summary) <= SUMMARY_LENGTH:
        return summary
    return summary[: SUMMARY_LENGTH - 1] + "\N{HORIZONTAL ELLIPSIS}"


@dataclass(frozen=True)
class OriginMarker:
    """One ``strangler_origin`` row (the columns of the table, by their meaning)."""

    kind: str
    group: str
    epoch: int | None = None
    decision_id: str | None = None
    route: str | None = None
    sku: str | None = None
    summary: str | None = None


def is_origin(change: LegacyChange) -> bool:
    """Is ``change`` a row of the kit's own table?"""
    return change.table == ORIGIN_TABLE


def opens_origin(change: LegacyChange) -> bool:
    """Is ``change`` a marker: the insert of a ``strangler_origin`` row as the first change
    of its legacy transaction (or of a transaction the envelope does not place)?"""
    return is_origin(change) and change.op == "c" and change.transaction_order in (None, 1)


def marker_of(change: LegacyChange) -> OriginMarker | None:
    """The marker ``change`` inserts (None when it is no marker); raises
    :class:`MalformedChange` for a marker row that is not one."""
    if not opens_origin(change):
        return None
    row = change.row
    kind = str_column(change, row, "kind")
    if kind not in (DECISION, FENCE):
        raise MalformedChange(f"{ORIGIN_TABLE}.kind must be decision or fence, got {kind!r}")
    epoch = None if row.get("epoch") is None else int_column(change, row, "epoch")
    if kind == FENCE and epoch is None:
        raise MalformedChange(f"a fence in {ORIGIN_TABLE} needs its epoch")
    return OriginMarker(
        kind,
        str_column(change, row, "group_name"),
        epoch,
        _text(row, "decision_id"),
        _text(row, "route"),
        _text(row, "sku"),
        _text(row, "summary"),
    )


def _text(row: Mapping[str, Any], column: str) -> str | None:
    value = row.get(column)
    if value is None or isinstance(value, bool):
        return None
    return str(value)
