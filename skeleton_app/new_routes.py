"""Routes the new system can answer, and the registry the route table checks against.

Each handler answers with exactly the JSON shape and status the legacy system gives for
the same route, so switching a route is invisible to clients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from flask import Response, jsonify

from skeleton_app.errors import json_error
from skeleton_app.read_model import ReadModel

NewHandler = Callable[[ReadModel, Mapping[str, Any]], Response]


def get_allocations(read_model: ReadModel, args: Mapping[str, Any]) -> Response:
    """``GET /allocations/<orderid>``: 200 ``[{"sku", "batchref"}]`` or 404."""
    orderid = str(args["orderid"])
    allocations = read_model.allocations_for(orderid)
    if not allocations:
        return json_error(404, "not found", f"no allocations for order {orderid}")
    return jsonify([{"sku": a.sku, "batchref": a.batchref} for a in allocations])


NEW_HANDLERS: Mapping[tuple[str, str], NewHandler] = MappingProxyType(
    {
        ("GET", "/allocations/<orderid>"): get_allocations,
    }
)
"""``(METHOD, pattern)`` -> handler; only these routes may be switched to the new system."""
