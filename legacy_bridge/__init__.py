"""Change data capture from the legacy database to the broker.

Public API:

- :func:`install`: install capture (change table, relay state, row triggers) into the
  legacy database; idempotent. Returns an :class:`InstallResult`.
- :data:`DEFAULT_TABLES`: the tables captured when none are named.
- :class:`Relay`: publishes captured changes in commit order to the ``legacy.cdc``
  topic exchange with publisher confirms (``run_once``, ``run``).
- :class:`BridgeError`, :class:`BridgeNotInstalled`, :class:`UnknownTable`.

The event envelope is described by ``docs/schemas/legacy-cdc-change.schema.json``.
"""

from legacy_bridge.capture import CapturedTable
from legacy_bridge.errors import BridgeError, BridgeNotInstalled, UnknownTable
from legacy_bridge.installer import DEFAULT_TABLES, InstallResult, install
from legacy_bridge.relay import Relay

__all__ = [
    "DEFAULT_TABLES",
    "BridgeError",
    "BridgeNotInstalled",
    "CapturedTable",
    "InstallResult",
    "Relay",
    "UnknownTable",
    "install",
]
