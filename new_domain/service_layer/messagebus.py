"""The message bus: routes each command to its handler and each event to its handlers.

``handle`` runs a command (or event) and every event it leads to inside ONE unit of
work: the handlers' own ``with uow: ...; uow.commit()`` blocks join it, and the bus
commits once at the end. So the write model, the read model written by event
handlers, and any bookkeeping commit together or not at all; an exception from any
handler propagates and rolls everything back. It returns what the command's handler
returned (the batch an allocation chose, the moves of a quantity cut ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from new_domain.domain.commands import Command
from new_domain.domain.events import Event
from new_domain.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

Message = Command | Event
Handler = Callable[[Any], Any]


class MessageBus:
    def __init__(
        self,
        uow: AbstractUnitOfWork,
        event_handlers: Mapping[type[Event], Sequence[Handler]],
        command_handlers: Mapping[type[Command], Handler],
    ) -> None:
        self.uow = uow
        self.event_handlers = event_handlers
        self.command_handlers = command_handlers

    def handle(self, message: Message) -> Any:
        """Handle ``message`` and every event it leads to; the command handler's result."""
        result: Any = None
        with self.uow:
            queue: list[Message] = [message]
            while queue:
                current = queue.pop(0)
                if isinstance(current, Command):
                    outcome = self._handle_command(current)
                    if current is message:
                        result = outcome
                elif isinstance(current, Event):
                    self._handle_event(current)
                else:
                    raise TypeError(f"{current!r} is neither a Command nor an Event")
                queue.extend(self.uow.collect_new_events())
            self.uow.commit()
        return result

    def _handle_command(self, command: Command) -> Any:
        logger.debug("handling command %s", command)
        try:
            handler = self.command_handlers[type(command)]
        except KeyError:
            raise LookupError(f"no handler for command {type(command).__name__}") from None
        return handler(command)

    def _handle_event(self, event: Event) -> None:
        for handler in self.event_handlers.get(type(event), ()):
            logger.debug("handling event %s with %s", event, handler)
            handler(event)
