"""The new domain's operations commands, as the root ``strangler`` command adds them
(``db`` and ``consume`` live in :mod:`new_domain.entrypoints.cli`)."""

from new_domain.entrypoints.decisions_command import decisions
from new_domain.entrypoints.dlq_commands import dlq
from new_domain.entrypoints.outbox_commands import outbox
from new_domain.entrypoints.rebuild_command import rebuild
from new_domain.entrypoints.status_commands import anomalies, status
from new_domain.entrypoints.verify_command import verify

__all__ = ["anomalies", "decisions", "dlq", "outbox", "rebuild", "status", "verify"]
