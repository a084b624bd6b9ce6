"""The new system's answers to the legacy shop's write routes (write group ``allocation``).

A write answered by the new system must be indistinguishable from legacy's answer: the
same checks of the body in the same order (:mod:`skeleton_app.legacy_validation`), the same
status and JSON on success, and legacy's status and JSON for every refusal of the model
(``examples/legacy_shop/app.py`` and ``operations.py``).

Each handler checks a request and returns a :class:`WriteIntent`: the product it is about
(the sku, or the batch reference naming it) and the decision to take once the facade
knows the new system owns that product.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from skeleton_app import legacy_validation as check
from skeleton_app.new_routes import DirectAnswer, json_body
from skeleton_app.patterns import RouteKey
from skeleton_app.write_path import (
    AlreadyAllocated,
    DomainError,
    DuplicateBatch,
    NotAllocated,
    OutOfStock,
    UnknownBatch,
    UnknownSku,
    WritePathPort,
)

Decide = Callable[[WritePathPort], DirectAnswer]
"""Takes the decision through the write path and answers as legacy would; raises the
write path's refusals (``DomainError``, ``NotOwned``)."""


@dataclass(frozen=True)
class WriteIntent:
    """A checked write: about product ``sku``, or (``sku`` None) the product of batch
    ``ref``; ``decide`` takes it."""

    decide: Decide
    sku: str | None = None
    ref: str | None = None


WriteHandler = Callable[[Mapping[str, Any], bytes], WriteIntent]
"""``(path arguments, request body) -> WriteIntent``; raises ``LegacyRefusal`` (the
answer legacy gives a request it refuses before deciding anything)."""


def add_batch(args: Mapping[str, Any], raw: bytes) -> WriteIntent:
    """``POST /batches``: 201 ``{ref, sku, qty, eta}``."""
    body = check.json_object(raw)
    ref = check.text(body, "ref")
    sku = check.text(body, "sku")
    qty = check.quantity(body)
    eta = check.optional_date(body, "eta")

    def decide(write_path: WritePathPort) -> DirectAnswer:
        write_path.add_batch(ref, sku, qty, eta)
        shown = None if eta is None else eta.isoformat()
        return DirectAnswer(201, json_body({"ref": ref, "sku": sku, "qty": qty, "eta": shown}))

    return WriteIntent(decide, sku=sku)


def change_batch_quantity(args: Mapping[str, Any], raw: bytes) -> WriteIntent:
    """``PATCH /batches/<ref>``: 200 ``{ref, qty, reallocated, unallocated}``."""
    ref = str(args["ref"])
    qty = check.quantity(check.json_object(raw), minimum=0)

    def decide(write_path: WritePathPort) -> DirectAnswer:
        changed = write_path.change_batch_quantity(ref, qty)
        sku = changed.sku
        return DirectAnswer(
            200,
            json_body(
                {
                    "ref": ref,
                    "qty": qty,
                    "reallocated": [
                        {"orderid": orderid, "sku": sku, "batchref": batchref}
                        for orderid, batchref in changed.reallocated
                    ],
                    "unallocated": [
                        {"orderid": orderid, "sku": sku} for orderid in changed.unallocated
                    ],
                }
            ),
        )

    return WriteIntent(decide, ref=ref)


def allocate(args: Mapping[str, Any], raw: bytes) -> WriteIntent:
    """``POST /allocate``: 201 ``{batchref}``."""
    body = check.json_object(raw)
    orderid = check.text(body, "orderid")
    sku = check.text(body, "sku")
    qty = check.quantity(body)

    def decide(write_path: WritePathPort) -> DirectAnswer:
        batchref = write_path.allocate(orderid, sku, qty)
        return DirectAnswer(201, json_body({"batchref": batchref}))

    return WriteIntent(decide, sku=sku)


def deallocate(args: Mapping[str, Any], raw: bytes) -> WriteIntent:
    """``POST /deallocate``: 200 ``{orderid, sku, batchref}``."""
    body = check.json_object(raw)
    orderid = check.text(body, "orderid")
    sku = check.text(body, "sku")

    def decide(write_path: WritePathPort) -> DirectAnswer:
        batchref = write_path.deallocate(orderid, sku)
        return DirectAnswer(200, json_body({"orderid": orderid, "sku": sku, "batchref": batchref}))

    return WriteIntent(decide, sku=sku)


WRITE_HANDLERS: Mapping[RouteKey, WriteHandler] = MappingProxyType(
    {
        ("POST", "/batches"): add_batch,
        ("PATCH", "/batches/<ref>"): change_batch_quantity,
        ("POST", "/allocate"): allocate,
        ("POST", "/deallocate"): deallocate,
    }
)
"""``(METHOD, pattern)`` -> handler, for every route of ``WRITE_GROUPS`` (the shop's
group ``allocation``)."""


REFUSALS: Mapping[type[DomainError], tuple[int, str]] = MappingProxyType(
    {
        UnknownSku: (400, "unknown sku"),
        OutOfStock: (409, "out of stock"),
        AlreadyAllocated: (409, "already allocated"),
        DuplicateBatch: (409, "duplicate batch"),
        UnknownBatch: (404, "not found"),
        NotAllocated: (404, "not found"),
    }
)
"""The model's refusals -> legacy's status and ``error``; the ``detail`` is the refusal's
message."""


def refusal_answer(refusal: DomainError) -> DirectAnswer | None:
    """Legacy's answer to the same refusal (None: a refusal legacy does not know)."""
    for kind, (status, error) in REFUSALS.items():
        if isinstance(refusal, kind):
            body: dict[str, Any] = {"error": error, "detail": str(refusal)}
            if isinstance(refusal, OutOfStock):
                body["sku"] = refusal.sku
            return DirectAnswer(status, json_body(body))
    return None
