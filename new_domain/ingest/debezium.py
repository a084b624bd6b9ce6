"""Debezium's own change events: where each stands in its stream, read from ``source``.

Debezium's connectors name no sequence number of ours; the position of a change is
derived from the log coordinates its ``source`` block carries (docs/debezium.md,
"Positions"), as one integer that increases in the stream's order:

- **PostgreSQL** (``connector: postgresql``): ``source.sequence`` is the JSON string
  ``["<last commit lsn>", "<lsn>"]``. Debezium streams whole transactions in commit
  order, a transaction's changes in lsn order; the last commit lsn before a transaction
  grows from one transaction to the next, while the lsn of a change of a long
  transaction may be lower than a change of the previous one. So the position orders
  by (commit part, lsn), the commit part being ``0`` for a snapshot row, ``1`` for a
  change before the first commit Debezium saw (the first transaction streamed after
  its snapshot) and ``last commit lsn + 2`` otherwise: ``commit part * 2^64 + lsn``.
- **MySQL / MariaDB** (``connector: mysql`` or ``mariadb``): the binlog file's number,
  ``source.pos`` and ``source.row``, then whether it is streamed (a snapshot row sits
  at the binlog coordinates the stream starts from, before the first streamed change):
  ``2^130 + ((file number * 2^64 + pos) * 2^32 + row) * 2 + streamed`` (the offset
  keeps them apart from PostgreSQL's, which stay below 2^129).

All the rows of one snapshot share one position: they are ordered within their snapshot
by the order they arrive in (a snapshot read is an upsert, and Debezium sends nothing
else while its snapshot runs). Positions are wider than 64 bits; they are stored as
``NUMERIC(40)``.

Debezium's positions are not dense (the log has gaps: other tables, other databases):
the guard against a forged far-future position is :func:`jumps_too_far`, a bound on how
far one change may move a stream's position ahead of the last one applied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POSTGRESQL = "postgresql"
BINLOG_CONNECTORS = ("mysql", "mariadb")
CONNECTORS = (POSTGRESQL, *BINLOG_CONNECTORS)

SNAPSHOT_MARKS = ("true", "first", "first_in_data_collection", "last_in_data_collection", "last")
"""``source.snapshot`` of a row of Debezium's initial (blocking) snapshot."""
STREAMING_MARKS = ("false", None, False)
LAST = "last"

MAX_WAL_JUMP = 2**44
"""PostgreSQL: how far (bytes of WAL, 16 TiB) one change may move a stream ahead."""
MAX_BINLOG_FILES_JUMP = 10_000
"""MySQL / MariaDB: how many binlog files one change may move a stream ahead."""
MAX_BINLOG_POS_JUMP = 2**36
"""MySQL / MariaDB: how far (bytes) one change may move ahead within one binlog file."""

_U64 = 2**64
_U32 = 2**32
_BINLOG = 2**130
_BINLOG_NUMBER = re.compile(r".*?(\d+)")


class DebeziumFormatError(ValueError):
    """The ``source`` block does not say where the change stands."""


@dataclass(frozen=True)
class Coordinates:
    """Where a Debezium change stands: its ``position``, whether it is a snapshot row
    (and its ``source.snapshot`` mark), and its legacy transaction id (None: none)."""

    position: int
    snapshot: bool
    mark: str | None
    transaction_id: str | None


def is_debezium(source: Mapping[str, Any]) -> bool:
    """A ``source`` block of Debezium (no ``seq`` of ours; a connector's coordinates)."""
    return "seq" not in source and ("sequence" in source or "lsn" in source or "pos" in source)


def coordinates(source: Mapping[str, Any], op: str, block: Any) -> Coordinates:
    """The change's coordinates; :class:`DebeziumFormatError` when ``source`` lacks them."""
    connector = source.get("connector")
    mark = _mark(source.get("snapshot"))
    snapshot = mark is not None
    if op == "r" and not snapshot:
        raise DebeziumFormatError("a snapshot read (op r) needs source.snapshot")
    if connector == POSTGRESQL:
        position = _postgres(source, snapshot)
        txid = source.get("txId")
        transaction = _id(txid) if txid is not None and not snapshot else None
    elif connector in BINLOG_CONNECTORS:
        position = _binlog(source, snapshot)
        transaction = None
    else:
        raise DebeziumFormatError(
            f"source.connector must be one of {', '.join(CONNECTORS)}, got {connector!r}"
        )
    if isinstance(block, Mapping) and not snapshot:
        given = block.get("id")
        if connector != POSTGRESQL or transaction is None:
            transaction = _id(given) if given is not None else transaction
    return Coordinates(position, snapshot, mark, transaction)


def transaction_key(connector_txid: Any) -> str:
    """A BEGIN/END event's ``id`` as the changes' transaction id: PostgreSQL's
    ``"<txId>:<lsn>"`` names the lsn of the event, so only ``txId`` identifies it."""
    text = _id(connector_txid)
    head, colon, tail = text.partition(":")
    return head if colon and head.isdigit() and tail.isdigit() else text


def jumps_too_far(last: int | None, position: int) -> bool:
    """Would ``position`` move a stream further ahead of ``last`` than any real log does
    between two changes (see :data:`MAX_WAL_JUMP`, :data:`MAX_BINLOG_FILES_JUMP`)?

    Positions of both connectors are told apart by their size (see the module
    docstring)."""
    if last is None or position <= last:
        return False
    if _is_binlog(position) or _is_binlog(last):
        (file_a, pos_a), (file_b, pos_b) = _binlog_parts(last), _binlog_parts(position)
        if file_b - file_a > MAX_BINLOG_FILES_JUMP:
            return True
        return file_b == file_a and pos_b - pos_a > MAX_BINLOG_POS_JUMP
    return _wal_reach(position) - _wal_reach(last) > MAX_WAL_JUMP


def after_new_snapshot(last: int | None, position: int, snapshot_row: bool) -> bool:
    """Is the change at ``position`` one that came after Debezium took a NEW snapshot of
    a stream already streaming past ``last`` (its offsets said the first snapshot was
    not finished: a kill before they were stored)? Its position does not say where it
    stands: such a change is neither applied nor skipped as a re-send.

    - **PostgreSQL**: a new snapshot's rows sit at commit part 0 and the first
      transaction after it at commit part 1, below a stream past its first transaction
      (``last``'s commit part 2 or more); a re-send at or below ``last`` never lies beyond
      the WAL ``last`` covers, while these lie beyond it (the new snapshot's lsn is
      legacy's WAL position when it began).
    - **MySQL / MariaDB**: a snapshot row above ``last`` while ``last`` is a streamed
      position (a re-sent row of the first snapshot is below it)."""
    if last is None:
        return False
    if _is_binlog(position) or _is_binlog(last):
        streamed_last = (last - _BINLOG) % 2 == 1
        return snapshot_row and streamed_last and position > last
    if position > last or last // _U64 < 2:
        return False
    return position % _U64 > _wal_reach(last)


def describe_position(position: int) -> str:
    """The position in the log's own words (for error messages)."""
    if _is_binlog(position):
        file_no, pos = _binlog_parts(position)
        return f"binlog file {file_no} pos {pos}"
    commit, lsn = divmod(position, _U64)
    before = "snapshot" if commit == 0 else "-" if commit == 1 else _lsn(commit - 2)
    return f"commit lsn {before}, lsn {_lsn(lsn)}"


def _postgres(source: Mapping[str, Any], snapshot: bool) -> int:
    lsn = _u64(source.get("lsn"), "source.lsn")
    sequence = source.get("sequence")
    commit: int | None = None
    if sequence is not None:
        try:
            pair = json.loads(sequence) if isinstance(sequence, str) else sequence
        except json.JSONDecodeError:
            raise DebeziumFormatError("source.sequence must be a JSON array of two lsns") from None
        if not isinstance(pair, list) or len(pair) != 2:
            raise DebeziumFormatError("source.sequence must be a JSON array of two lsns")
        if pair[0] is not None:
            commit = _u64(pair[0], "source.sequence[0]")
        if pair[1] is not None and _u64(pair[1], "source.sequence[1]") != lsn:
            raise DebeziumFormatError("source.sequence[1] must be source.lsn")
    part = 0 if snapshot else 1 if commit is None else commit + 2
    return part * _U64 + lsn


def _binlog(source: Mapping[str, Any], snapshot: bool) -> int:
    name = source.get("file")
    match = _BINLOG_NUMBER.fullmatch(name) if isinstance(name, str) else None
    if match is None or len(match.group(1)) > 9:
        raise DebeziumFormatError(f"source.file must be a binlog file name, got {name!r}")
    pos = _u64(source.get("pos"), "source.pos")
    row = source.get("row", 0)
    if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < _U32:
        raise DebeziumFormatError(f"source.row must be an integer from 0 to 2^32-1, got {row!r}")
    file_no = int(match.group(1))
    if file_no < 1:
        raise DebeziumFormatError("source.file must be numbered from 1")
    return _BINLOG + ((file_no * _U64 + pos) * _U32 + row) * 2 + (0 if snapshot else 1)


def _is_binlog(position: int) -> bool:
    return position >= _BINLOG


def _binlog_parts(position: int) -> tuple[int, int]:
    file_no, pos = divmod((position - _BINLOG) // 2 // _U32, _U64)
    return file_no, pos


def _wal_reach(position: int) -> int:
    commit, lsn = divmod(position, _U64)
    return max(commit - 2, lsn)


def _mark(value: Any) -> str | None:
    if value in STREAMING_MARKS:
        return None
    if value is True:
        return "true"
    if value in SNAPSHOT_MARKS:
        return str(value)
    raise DebeziumFormatError(
        f"source.snapshot {value!r} is not supported (initial snapshots only: one of"
        f" {', '.join(SNAPSHOT_MARKS)}, or false)"
    )


def _u64(value: Any, name: str) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _U64:
        raise DebeziumFormatError(f"{name} must be an integer from 0 to 2^64-1, got {value!r}")
    return value


def _id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DebeziumFormatError(f"a transaction id must be a string, got {value!r}")
    text = str(value)
    if not text or len(text) > 64 or "\x00" in text:
        raise DebeziumFormatError("a transaction id must be 1 to 64 characters, no NUL")
    return text


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
