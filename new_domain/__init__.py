"""The new allocation domain, fed by legacy change events.

Public API:

- :func:`bootstrap`: the composition root; returns the message bus.
- :func:`upgrade_database`: migrate the new database (``alembic upgrade heads``).
- :func:`open_read_model` -> :class:`ReadModel`; ``allocations_for(orderid)`` returns
  :class:`Allocation` items ordered by sku then batchref; ``lag_seconds()`` how far the
  read model is behind legacy (None before anything was applied); with a ``time_limit``
  a read that takes longer raises :class:`ReadTimeout`; ``decision_parity()`` the
  write routes' decision parity (:class:`DecisionCount` per route).
- :class:`Consumer`: applies ``legacy.cdc`` change events from a broker queue, in
  batches, with dead letters; its domain events leave through the outbox.
- :func:`apply_change` / :func:`parse_change`: apply one change envelope in-process
  (the embedded demo); :class:`MalformedChange` when it is not one.
- :data:`metadata`: the new domain's tables (SQLAlchemy), the migrations' target.
- :data:`CLI_COMMANDS`: its ``click`` commands (``db``, ``consume``, ``status`` ...),
  which the root ``strangler`` command adds.
"""

from new_domain.adapters.orm import metadata
from new_domain.adapters.schema import upgrade_database
from new_domain.bootstrap import bootstrap
from new_domain.entrypoints.commands import CLI_COMMANDS
from new_domain.entrypoints.consumer import Consumer
from new_domain.ingest import MalformedChange, apply_change, parse_change
from new_domain.ingest.ports import DecisionCount
from new_domain.views import Allocation, ReadModel, ReadTimeout, open_read_model

__all__ = [
    "CLI_COMMANDS",
    "Allocation",
    "Consumer",
    "DecisionCount",
    "MalformedChange",
    "ReadModel",
    "ReadTimeout",
    "apply_change",
    "bootstrap",
    "metadata",
    "open_read_model",
    "parse_change",
    "upgrade_database",
]
