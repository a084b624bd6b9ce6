"""Change data capture from the legacy database to the broker.

Public API:

- :func:`install`: install (or refresh, or upgrade) capture (change table, relay state,
  row triggers) in the legacy database; idempotent. Returns an :class:`InstallResult`.
- :func:`uninstall`: remove everything install added (refuses while changes are not
  published, unless ``force``).
- :func:`stop_capture`: stop capturing some tables, keeping the others and the relay.
- :func:`snapshot`: queue the existing rows of captured tables as op ``r`` events,
  in resumable primary-key chunks.
- :func:`bridge_status`: pending changes, checkpoint, throughput (:class:`BridgeStatus`).
- :class:`Relay`: publishes captured changes in commit order to the ``legacy.cdc``
  topic exchange with publisher confirms (``run_once``, ``run``), with heartbeats,
  retention and trigger refresh after column changes.
- :func:`engine_slots`: the replication slots the Debezium engine runs on
  (:class:`SlotStatus`: in use, confirmed LSN, WAL held).
- :class:`BridgeError`, :class:`BridgeNotInstalled`, :class:`UnknownTable`.
- :data:`bridge_cli`: the ``bridge`` command group (``strangler bridge ...``); its
  ``run --engine debezium`` captures PostgreSQL from its log, without triggers, with the
  embedded Debezium engine (:mod:`legacy_bridge.debezium_engine`, the ``debezium`` extra).

Supported legacy databases: PostgreSQL 13+, SQLite, MariaDB 10.3+. The event envelope is
described by ``docs/schemas/legacy-cdc-change.schema.json``, heartbeats by
``docs/schemas/legacy-cdc-heartbeat.schema.json``.
"""

from legacy_bridge.capture import CapturedTable
from legacy_bridge.cli import bridge as bridge_cli
from legacy_bridge.debezium_cli import SlotStatus, engine_slots
from legacy_bridge.errors import BridgeError, BridgeNotInstalled, UnknownTable
from legacy_bridge.installer import (
    InstallResult,
    StopResult,
    UninstallResult,
    install,
    stop_capture,
    uninstall,
)
from legacy_bridge.relay import Relay
from legacy_bridge.snapshot import TableSnapshot, snapshot
from legacy_bridge.status import BridgeStatus, bridge_status

__all__ = [
    "BridgeError",
    "BridgeNotInstalled",
    "BridgeStatus",
    "CapturedTable",
    "InstallResult",
    "Relay",
    "SlotStatus",
    "StopResult",
    "TableSnapshot",
    "UninstallResult",
    "UnknownTable",
    "bridge_cli",
    "bridge_status",
    "engine_slots",
    "install",
    "snapshot",
    "stop_capture",
    "uninstall",
]
