"""The new system's write path as the facade sees it (a port; ``new_domain`` provides it).

``new_domain.WritePath`` decides about the products the new system owns; the composition
root builds it from ``NEW_DB_URL`` and hands it to the facade. Its refusals are
``new_domain``'s domain errors (their message is legacy's ``detail``) and ``NotOwned``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import date
from typing import Protocol

from new_domain import (
    AlreadyAllocated,
    DomainError,
    DuplicateBatch,
    NotAllocated,
    NotOwned,
    OutOfStock,
    Owner,
    Ownership,
    OwnershipRule,
    QuantityChanged,
    UnknownBatch,
    UnknownSku,
    move_ownership,
    read_ownership,
)

__all__ = [
    "AlreadyAllocated",
    "DomainError",
    "DuplicateBatch",
    "NotAllocated",
    "NotOwned",
    "OutOfStock",
    "Owner",
    "Ownership",
    "OwnershipRule",
    "QuantityChanged",
    "UnknownBatch",
    "UnknownSku",
    "WritePathPort",
    "legacy_decides_alone",
    "move_ownership",
    "read_ownership",
]


class WritePathPort(Protocol):
    """What ``new_domain.WritePath`` offers the facade (one unit of work per call)."""

    def ownership(self) -> Ownership: ...

    def held(self) -> AbstractContextManager[Ownership]:
        """The ownership, share-locked until the block ends (a move waits for it)."""
        ...

    def sku_of_batch(self, ref: str) -> str | None: ...

    def add_batch(self, ref: str, sku: str, qty: int, eta: date | None) -> None: ...

    def allocate(self, orderid: str, sku: str, qty: int) -> str: ...

    def deallocate(self, orderid: str, sku: str) -> str: ...

    def change_batch_quantity(self, ref: str, qty: int) -> QuantityChanged: ...

    def close(self) -> None: ...


def legacy_decides_alone(ownership: Ownership) -> bool:
    """Legacy owns every product of the group and no move is under way (``legacy`` or
    ``shadow``, settled): its writes can go to legacy without asking who owns what."""
    return ownership.state == "active" and not ownership.rule.owns_any
