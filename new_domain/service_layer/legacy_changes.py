"""Applying legacy change events with an exactly-once effect.

Delivery is at least once (the relay re-sends, the broker redelivers). Each change
carries a position (``source.seq``) that increases in the legacy database's commit
order; the position of the last change applied from each stream is stored in
``applied_change_position`` in the SAME transaction as the change's effect (and the
translation state it taught the anti-corruption layer). A change at or below the
stored position was applied already and is skipped: a redelivery can never apply
twice, and a crash before commit leaves neither the effect nor the position.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from new_domain import acl
from new_domain.service_layer.messagebus import MessageBus

logger = logging.getLogger(__name__)


def apply_change(bus: MessageBus, change: acl.LegacyChange) -> bool:
    """Apply one change in the bus's unit of work; False when it was applied before.

    Inside an enclosing ``with bus.uow:`` block it joins that transaction.
    """
    uow = bus.uow
    with uow:
        last = uow.positions.get(change.stream)
        if last is not None and change.position <= last:
            logger.debug(
                "skipping change %s: position %d <= %d already applied in %s",
                change.message_id,
                change.position,
                last,
                change.stream,
            )
            return False
        uow.change_id = change.message_id
        for message in acl.translate(change, uow.legacy_keys):
            bus.handle(message)
        uow.positions.set(change.stream, change.position)
        uow.commit()
    return True


def apply_changes(bus: MessageBus, changes: Iterable[acl.LegacyChange]) -> int:
    """Apply ``changes`` in order in ONE transaction; the number actually applied."""
    uow = bus.uow
    with uow:
        applied = sum(apply_change(bus, change) for change in changes)
        uow.commit()
    return applied
