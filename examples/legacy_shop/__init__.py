"""A stand-in legacy monolith: a small allocation shop with its own schema.

It knows nothing of the kit; the kit captures its database and proxies its HTTP API.

Public API: :func:`create_app` (its WSGI app), :data:`TABLES` (its tables, the ones the
bridge captures), :data:`legacy_cli` (the ``legacy`` command group).
"""

from examples.legacy_shop.app import create_app
from examples.legacy_shop.cli import legacy as legacy_cli
from examples.legacy_shop.schema import TABLES

__all__ = ["TABLES", "create_app", "legacy_cli"]
