"""The new allocation domain, fed by legacy change events.

Public API:

- :func:`bootstrap`: the composition root; returns the message bus.
- :func:`upgrade_database`: migrate the new database (``alembic upgrade heads``);
  :func:`schema_problem`: why a database is not at every head revision (None: it is).
- :func:`open_read_model` -> :class:`ReadModel`; ``allocations_for(orderid)`` returns
  :class:`Allocation` items ordered by sku then batchref; ``lag_seconds()`` how far the
  read model is behind legacy (None before anything was applied); with a ``time_limit``
  a read that takes longer raises :class:`ReadTimeout`; ``decision_parity()`` the
  write routes' decision parity (:class:`DecisionCount` per route).
- :class:`Consumer`: applies ``legacy.cdc`` change events from a broker queue, in
  batches, with dead letters; its domain events leave through the outbox.
  :data:`DEFAULT_QUEUE` is its queue unless told otherwise.
- :class:`PipelineReader`: the consumer's progress, queue, dead letters, outbox and
  anomalies as JSON-ready data, and dead-letter replay, for an operator's console
  (:class:`PipelineUnavailable` when the new database or the broker cannot be read).
- :class:`OutboxRelay` / :func:`open_outbox_relay`: publishes the outbox's domain events
  to ``new_domain.events`` (``run(stop)``).
- :func:`apply_change` / :func:`parse_change`: apply one change envelope in-process
  (the embedded demo); :class:`MalformedChange` when it is not one.
- :data:`metadata`: the new domain's tables (SQLAlchemy), the migrations' target.
- :data:`CLI_COMMANDS`: its ``click`` commands (``db``, ``consume``, ``status`` ...),
  which the root ``strangler`` command adds.
- :class:`WritePath`: the new system's own write decisions for the products it owns
  (``add_batch``, ``allocate``, ``deallocate``, ``change_batch_quantity`` ->
  :class:`QuantityChanged`), each in one transaction that checks the ownership first;
  :class:`NotOwned` when the product is legacy's or changing hands; the model's
  refusals :class:`DomainError` (:class:`UnknownSku`, :class:`OutOfStock`,
  :class:`AlreadyAllocated`, :class:`NotAllocated`, :class:`UnknownBatch`,
  :class:`DuplicateBatch`), whose message is legacy's ``detail``.
- Write ownership (docs/write-path.md): :class:`OwnershipRule` (``legacy``, ``shadow``,
  ``canary N``, ``new``), :class:`Ownership` (a group's rule, epoch and state) and
  :class:`Owner`; :func:`read_ownership` and :func:`move_ownership` inside the caller's
  transaction (the route table's move).
"""

from new_domain.adapters.orm import metadata
from new_domain.adapters.ownership import move_ownership, read_ownership
from new_domain.adapters.schema import schema_problem, upgrade_database
from new_domain.bootstrap import bootstrap
from new_domain.domain.model import (
    AlreadyAllocated,
    DomainError,
    DuplicateBatch,
    NotAllocated,
    OutOfStock,
    UnknownBatch,
    UnknownSku,
)
from new_domain.domain.ownership import NotOwned, Owner, Ownership, OwnershipRule
from new_domain.entrypoints.commands import CLI_COMMANDS
from new_domain.entrypoints.consumer import DEFAULT_QUEUE, Consumer
from new_domain.entrypoints.operations import PipelineReader, PipelineUnavailable
from new_domain.entrypoints.outbox_relay import OutboxRelay, open_outbox_relay
from new_domain.entrypoints.write_path import QuantityChanged, WritePath
from new_domain.ingest import MalformedChange, apply_change, parse_change
from new_domain.ingest.ports import DecisionCount
from new_domain.views import Allocation, ReadModel, ReadTimeout, open_read_model

__all__ = [
    "CLI_COMMANDS",
    "DEFAULT_QUEUE",
    "AlreadyAllocated",
    "Allocation",
    "Consumer",
    "OutboxRelay",
    "DecisionCount",
    "DomainError",
    "DuplicateBatch",
    "MalformedChange",
    "NotAllocated",
    "NotOwned",
    "OutOfStock",
    "Owner",
    "Ownership",
    "OwnershipRule",
    "PipelineReader",
    "PipelineUnavailable",
    "QuantityChanged",
    "ReadModel",
    "ReadTimeout",
    "UnknownBatch",
    "UnknownSku",
    "WritePath",
    "apply_change",
    "bootstrap",
    "metadata",
    "move_ownership",
    "open_outbox_relay",
    "open_read_model",
    "schema_problem",
    "parse_change",
    "read_ownership",
    "upgrade_database",
]
