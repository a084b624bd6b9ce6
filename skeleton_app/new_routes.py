"""Routes the new system can answer, and the registry the route table checks against.

Each handler answers with exactly the JSON shape and status the legacy system gives for
the same route, so switching a route is invisible to clients. Handlers run in an
application context but outside the client's request (off the request path when
shadowing): they get everything they need in a ``NewRequest``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from flask import Response, jsonify

from skeleton_app.errors import json_error
from skeleton_app.read_model import ReadModel


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


def get_allocations(read_model: ReadModel, request: NewRequest) -> Response:
    """``GET /allocations/<orderid>``: 200 ``[{"sku", "batchref"}]`` or 404."""
    orderid = str(request.args["orderid"])
    allocations = read_model.allocations_for(orderid)
    if not allocations:
        return json_error(404, "not found", f"no allocations for order {orderid}")
    return jsonify([{"sku": a.sku, "batchref": a.batchref} for a in allocations])


NEW_HANDLERS: Mapping[tuple[str, str], NewHandler] = MappingProxyType(
    {
        ("GET", "/allocations/<orderid>"): get_allocations,
    }
)
"""``(METHOD, pattern)`` -> handler; only these routes may be shadowed or moved to new."""
