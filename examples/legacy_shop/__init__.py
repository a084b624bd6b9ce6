"""A stand-in legacy monolith: a small allocation shop with its own schema.

It knows nothing of the kit; the kit captures its database and proxies its HTTP API.
"""

from examples.legacy_shop.app import create_app
from examples.legacy_shop.schema import TABLES

__all__ = ["TABLES", "create_app"]
