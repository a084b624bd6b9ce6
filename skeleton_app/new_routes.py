"""Routes the new system can answer, and the registry the route table checks against.

Each handler answers with exactly the JSON shape and status the legacy system gives for
the same route, so switching a route is invisible to clients. Handlers run in an
application context but outside the client's request (off the request path when
shadowing): they get everything they need in a ``NewRequest``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from flask import Response

from skeleton_app.patterns import RouteKey
from skeleton_app.read_model import ReadModel

JSON = "application/json"


@dataclass(frozen=True)
class NewRequest:
    """The client's request as a handler of the new system sees it."""

    method: str
    path: str
    args: Mapping[str, Any]
    query_string: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)


NewHandler = Callable[[ReadModel, NewRequest], Response]


@dataclass(frozen=True)
class DirectAnswer:
    """A whole JSON answer of a read route, built without Flask (see ``DIRECT_HANDLERS``)."""

    status: int
    body: bytes


DirectHandler = Callable[[ReadModel, Mapping[str, Any]], DirectAnswer]
"""``(read model, path arguments) -> DirectAnswer``; raises what the read model raises."""


def json_body(value: object) -> bytes:
    """``value`` as the facade's (and a Flask legacy system's) ``jsonify`` writes it:
    compact, keys sorted, ASCII only, a final newline."""
    text = json.dumps(value, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return f"{text}\n".encode()


def allocations_answer(read_model: ReadModel, args: Mapping[str, Any]) -> DirectAnswer:
    """``GET /allocations/<orderid>``: 200 ``[{"sku", "batchref"}]`` or 404."""
    orderid = str(args["orderid"])
    allocations = read_model.allocations_for(orderid)
    if not allocations:
        detail = f"no allocations for order {orderid}"
        return DirectAnswer(404, json_body({"error": "not found", "detail": detail}))
    return DirectAnswer(
        200, json_body([{"sku": a.sku, "batchref": a.batchref} for a in allocations])
    )


def get_allocations(read_model: ReadModel, request: NewRequest) -> Response:
    """``GET /allocations/<orderid>`` as a Flask response (shadowing, canary)."""
    return direct_response(allocations_answer(read_model, request.args))


def direct_response(answer: DirectAnswer) -> Response:
    return Response(answer.body, status=answer.status, mimetype=JSON)


NEW_HANDLERS: Mapping[tuple[str, str], NewHandler] = MappingProxyType(
    {
        ("GET", "/allocations/<orderid>"): get_allocations,
    }
)
"""``(METHOD, pattern)`` -> handler; only these routes may be shadowed or moved to new."""

DIRECT_HANDLERS: Mapping[tuple[str, str], tuple[NewHandler, DirectHandler]] = MappingProxyType(
    {
        ("GET", "/allocations/<orderid>"): (get_allocations, allocations_answer),
    }
)
"""Read routes whose answer can also be built without Flask: ``(METHOD, pattern)`` ->
(the handler in ``NEW_HANDLERS``, its direct form). The facade serves such a route in
mode ``new`` on its direct path (see :mod:`skeleton_app.direct`) while the route's
handler is that one."""


@dataclass(frozen=True)
class WriteGroup:
    """Write routes that change one aggregate, and so move between the systems together
    (see docs/write-path.md): what moves is the ownership of the aggregate's instances."""

    name: str
    routes: tuple[RouteKey, ...]

    def __contains__(self, key: object) -> bool:
        return key in self.routes


ALLOCATION = WriteGroup(
    "allocation",
    (
        ("POST", "/batches"),
        ("PATCH", "/batches/<ref>"),
        ("POST", "/allocate"),
        ("POST", "/deallocate"),
    ),
)
"""The legacy shop's write routes: each changes one product (a sku, its batches and
their allocations). Their answers are in :mod:`skeleton_app.new_writes`."""

WRITE_GROUPS: Mapping[str, WriteGroup] = MappingProxyType({ALLOCATION.name: ALLOCATION})
"""Group name -> write group. Another legacy system declares its own groups (and gives the
facade their answers); a route belongs to at most one group."""
