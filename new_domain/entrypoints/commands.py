"""The new domain's commands, as the root ``strangler`` command adds them: ``db`` and
``consume`` (:mod:`new_domain.entrypoints.cli`) and the operations commands."""

from new_domain.entrypoints.cli import consume, db
from new_domain.entrypoints.decisions_command import decisions
from new_domain.entrypoints.dlq_commands import dlq
from new_domain.entrypoints.outbox_commands import outbox
from new_domain.entrypoints.ownership_commands import ownership
from new_domain.entrypoints.rebuild_command import rebuild
from new_domain.entrypoints.shard_commands import shard_router
from new_domain.entrypoints.status_commands import anomalies, status
from new_domain.entrypoints.verify_command import verify

CLI_COMMANDS = (
    db,
    consume,
    anomalies,
    decisions,
    dlq,
    outbox,
    ownership,
    rebuild,
    shard_router,
    status,
    verify,
)
"""Every command of the new domain, for the root ``strangler`` command."""

__all__ = [
    "CLI_COMMANDS",
    "anomalies",
    "consume",
    "db",
    "decisions",
    "dlq",
    "outbox",
    "ownership",
    "rebuild",
    "shard_router",
    "status",
    "verify",
]
