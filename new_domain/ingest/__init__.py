"""Ingestion: legacy change events in, the new domain's state out, exactly once.

Everything that applies one legacy change lives here, in one place:

- :mod:`~new_domain.ingest.envelope`: the ``legacy.cdc`` envelope checked and parsed,
  the kit bridge's and Debezium's own (:func:`parse_message`, :class:`LegacyChange`,
  :class:`Heartbeat`, :class:`TransactionBoundary`, :class:`Tombstone`);
- :mod:`~new_domain.ingest.debezium`: the positions of Debezium's changes, from its
  connectors' log coordinates;
- :mod:`~new_domain.ingest.translators`: the anti-corruption layer, one
  :class:`Translator` per captured legacy table (:data:`LEGACY_SHOP`);
- :mod:`~new_domain.ingest.ports`: the bookkeeping it needs in the unit of work's
  transaction (legacy keys, stream positions, dead letters) and their types;
- :mod:`~new_domain.ingest.apply`: a batch applied in one transaction, positions stored
  with the effects (:func:`apply_changes`);
- :mod:`~new_domain.ingest.failures`: split, retry, give up and dead-letter, over any
  ``apply(items)`` callable (:class:`FailurePolicy`).

The consumer (``new_domain.entrypoints.consumer``) only connects, fills batches, and
acknowledges or hands back.
"""

from new_domain.ingest.apply import (
    AfterNewSnapshot,
    Applied,
    ChangeFailed,
    OutOfSequence,
    PositionTooFar,
    apply_change,
    apply_changes,
)
from new_domain.ingest.envelope import (
    Heartbeat,
    LegacyChange,
    MalformedChange,
    Parsed,
    Tombstone,
    TransactionBoundary,
    heartbeat_sources,
    parse_change,
    parse_message,
)
from new_domain.ingest.failures import (
    DatabaseUnavailable,
    FailurePolicy,
    Interrupted,
    dead_letter_headers,
    dead_letter_message,
    publish_dead_letters,
)
from new_domain.ingest.legacy_shop import LEGACY_SHOP
from new_domain.ingest.ports import DeadLetter, FailedMessage, describe_error
from new_domain.ingest.translators import Recognizer, Translator, Translators, UnknownLegacyRow

__all__ = [
    "LEGACY_SHOP",
    "AfterNewSnapshot",
    "Applied",
    "ChangeFailed",
    "DatabaseUnavailable",
    "DeadLetter",
    "FailedMessage",
    "FailurePolicy",
    "Heartbeat",
    "Interrupted",
    "LegacyChange",
    "MalformedChange",
    "OutOfSequence",
    "Parsed",
    "PositionTooFar",
    "Recognizer",
    "Tombstone",
    "TransactionBoundary",
    "Translator",
    "Translators",
    "UnknownLegacyRow",
    "apply_change",
    "apply_changes",
    "dead_letter_headers",
    "dead_letter_message",
    "heartbeat_sources",
    "describe_error",
    "parse_change",
    "parse_message",
    "publish_dead_letters",
]
