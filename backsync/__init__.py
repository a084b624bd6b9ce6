"""Back-sync: the legacy mimic of the write path (docs/write-path.md, *Back-sync*).

While products are owned by the new system, legacy must still hold every decision the
new system takes about them (its reports, its batch jobs, and a hand-back need them).
Back-sync consumes the new system's domain events (``new_domain.events``, queue
``strangler.backsync``) and writes each decision into the legacy database as legacy's own
code would have, in one legacy transaction that starts with the origin marker and ends
with back-sync's position; it also writes the fences of ownership moves.

Transitional: this package is deleted whole when legacy is gone. It imports ``broker``
and nothing else of the kit; only the composition root imports it.

Public API:

- :data:`backsync_cli`: the ``backsync`` command group (``install``, ``run``, ``status``,
  ``dlq list|replay``).
- :class:`BackSync`: the loop (``run(stop)``, ``run_once()``); :class:`Writer` the legacy
  transactions it commits; :data:`LEGACY_SHOP` the legacy shop's mimic
  (:class:`Mimic`: another legacy application declares its own).
- :func:`install_tables`, :func:`declare`: what ``backsync install`` sets up;
  :func:`make_engine`: an engine on the legacy database as back-sync needs it.
- :func:`read_status` / :func:`backsync_status` -> :class:`BackSyncStatus`.
- :data:`QUEUE`, :data:`EXCHANGE`, :func:`dead_letter_queue`.
"""

from backsync.cli import backsync as backsync_cli
from backsync.cli import backsync_status
from backsync.database import make_engine
from backsync.install import install_tables
from backsync.legacy_shop import LEGACY_SHOP
from backsync.mimic import Mimic, Refused
from backsync.runner import EXCHANGE, QUEUE, BackSync, dead_letter_queue, declare
from backsync.status import BackSyncStatus, read_status
from backsync.writer import Writer

__all__ = [
    "EXCHANGE",
    "LEGACY_SHOP",
    "QUEUE",
    "BackSync",
    "BackSyncStatus",
    "Mimic",
    "Refused",
    "Writer",
    "backsync_cli",
    "backsync_status",
    "dead_letter_queue",
    "declare",
    "install_tables",
    "make_engine",
    "read_status",
]
