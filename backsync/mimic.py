"""The port between back-sync and one legacy application: its mimic.

A mimic writes a decision of the new system into the legacy database exactly as the
legacy application's own code would have written it, in the caller's transaction (after
the origin marker, before back-sync's position). It knows the legacy tables; back-sync
knows none. The legacy shop's is :mod:`backsync.legacy_shop`; another legacy
application declares its own module with the same three members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import Connection

from backsync.messages import Decision


class Refused(Exception):
    """Legacy's state does not allow this decision (an unknown batch, a line that is not
    there ...): it can never be written and goes to the dead-letter queue."""


class Mimic(Protocol):
    """One legacy application's writes."""

    def group(self, route: str) -> str | None:
        """The write group of ``route`` (None: a route this mimic does not write)."""

    def write(self, connection: Connection, decision: Decision) -> None:
        """Write ``decision``'s legacy rows in ``connection``'s transaction; raise
        :class:`Refused` (or :class:`~backsync.messages.MalformedMessage`) when it cannot."""

    def lock_products(self, connection: Connection, changing: Callable[[str], bool]) -> int:
        """Lock (``SELECT ... FOR UPDATE``) the product rows whose sku ``changing`` picks
        until the transaction ends; how many were locked."""
