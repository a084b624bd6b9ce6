"""The composition root: builds the message bus with its real (or given) adapters."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from new_domain.adapters.database import create_engine
from new_domain.domain.model import TieBreak
from new_domain.service_layer import handlers
from new_domain.service_layer.messagebus import MessageBus
from new_domain.service_layer.unit_of_work import AbstractUnitOfWork, SqlAlchemyUnitOfWork


def bootstrap(
    new_db_url: str | None = None,
    uow: AbstractUnitOfWork | None = None,
    tie_break: TieBreak = TieBreak.CREATED,
) -> MessageBus:
    """A message bus whose handlers get their dependencies injected.

    Without ``uow``, a SQLAlchemy unit of work on ``new_db_url`` (default: the
    ``NEW_DB_URL`` environment variable). Tests pass an in-memory unit of work.
    ``tie_break`` orders batches with the same eta when the new domain's own rules
    allocate (see :mod:`new_domain.domain.model`). Nothing connects until a message is
    handled.
    """
    if uow is None:
        url = new_db_url or os.environ.get("NEW_DB_URL")
        if not url:
            raise ValueError("no new database: pass new_db_url or set NEW_DB_URL")
        uow = SqlAlchemyUnitOfWork(create_engine(url, for_writes=True))
    dependencies: dict[str, Any] = {"uow": uow, "tie_break": tie_break}
    event_handlers = {
        event_type: [_inject(handler, dependencies) for handler in event_handlers]
        for event_type, event_handlers in handlers.EVENT_HANDLERS.items()
    }
    command_handlers = {
        command_type: _inject(handler, dependencies)
        for command_type, handler in handlers.COMMAND_HANDLERS.items()
    }
    return MessageBus(uow, event_handlers, command_handlers)


def _inject(handler: Callable[..., Any], dependencies: Mapping[str, Any]) -> Callable[[Any], Any]:
    """``handler`` with the dependencies its parameters name filled in."""
    parameters = _parameters(handler)
    wanted = {name: dependency for name, dependency in dependencies.items() if name in parameters}
    return lambda message: handler(message, **wanted)


@functools.cache
def _parameters(handler: Callable[..., Any]) -> frozenset[str]:
    """The names of ``handler``'s parameters (a bus is built per decision of the write
    path: the signature is read once per handler, not once per bus)."""
    return frozenset(inspect.signature(handler).parameters)
