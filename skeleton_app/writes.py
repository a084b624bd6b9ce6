"""Serving the routes of a write group: the owner of the product decides (docs/write-path.md).

While the group is ``legacy`` or ``shadow`` and settled, legacy owns every product and
writes are proxied (the data plane sends a write group's routes to the facade whoever owns
the product: only the facade holds the ownership row while legacy decides). Otherwise the facade
checks the body exactly as legacy would (a refusal is legacy's answer, word for word),
finds the product (the sku in the body; for ``PATCH /batches/<ref>`` the batch's product in
the new model: an unknown ref goes to legacy in ``canary``, to the new system in ``new``),
and asks the group's ownership, as the route table's snapshot last read it, who owns it:

- new: the new system's write path decides; its refusals are legacy's answers;
- legacy: proxied to legacy;
- changing hands (a move waits for its fence): ``503`` with ``Retry-After: 1``, and
  neither system decides.

The write path checks ownership again in its own transaction; when it finds the product
is not the new system's (this worker's snapshot was stale) it changes nothing and the
facade proxies (legacy owns it) or answers 503 (changing hands). A write proxied to legacy
is proxied while the group's ownership row is share-locked, after reading it again: a
move waits until legacy has answered, so no write the facade gave legacy can commit after
a takeover's fence. A write the new system
may have applied is never sent to legacy as well: a timeout is a 504, a failure a 502.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from skeleton_app.errors import json_error, printable
from skeleton_app.facade import Facade
from skeleton_app.legacy_validation import MAX_BODY_BYTES, LegacyRefusal, too_large
from skeleton_app.new_routes import JSON, json_body
from skeleton_app.new_system import NewSystemTimeout
from skeleton_app.new_writes import WriteIntent, refusal_answer
from skeleton_app.routes_table import RouteMatch
from skeleton_app.write_path import (
    DomainError,
    NotOwned,
    Owner,
    Ownership,
    legacy_decides_alone,
)

log = logging.getLogger(__name__)

RETRY_AFTER = "1"
"""Seconds a client waits before it retries a write about a product changing hands."""

NEW, LEGACY, CHANGING, REFUSED, UNKNOWN = "new", "legacy", "changing", "refused", "unknown"
"""``owner`` labels of ``strangler_facade_write_answers``: the new system decided (or
refused as the model does), proxied to legacy, changing hands (503), refused by the
facade's checks of the body, as legacy would (400, 413), ownership unknown (503)."""


def serve_write(facade: Facade, found: RouteMatch, route: str) -> Response:
    """Answer a request to a route of a write group."""
    ownership = found.ownership
    if ownership is None:
        return _count(
            facade,
            route,
            UNKNOWN,
            _unavailable(
                f"the ownership of write group {found.group} could not be read yet; retry"
            ),
        )
    if legacy_decides_alone(ownership):
        held = _to_legacy_held(facade, route, None, legacy_decides_alone)
        if held is None:
            return _count(facade, route, UNKNOWN, _unconfirmed(found))
        if isinstance(held, Response):
            return _count(facade, route, LEGACY, held)
        ownership = held
    handler = facade.write_handlers.get((found.method, found.pattern))
    write_path = facade.write_path
    if handler is None or write_path is None:
        log.error("write group %s owns products but the facade has no write path", found.group)
        return _count(
            facade,
            route,
            UNKNOWN,
            _unavailable(f"the new system's write path for {route} is not configured"),
        )
    try:
        body = _body()
        intent = handler(found.args, body)
    except LegacyRefusal as refusal:
        g.served_by = "facade"
        return _count(facade, route, REFUSED, _answer(refusal.status, json_body(refusal.body)))
    return _decide(facade, found, route, ownership, intent, body)


def _decide(
    facade: Facade,
    found: RouteMatch,
    route: str,
    ownership: Ownership,
    intent: WriteIntent,
    body: bytes,
) -> Response:
    write_path = facade.write_path
    assert write_path is not None
    sku = intent.sku
    if sku is None and intent.ref is not None:
        ref = intent.ref
        try:
            sku = facade.new_system.call(lambda: write_path.sku_of_batch(ref))
        except Exception as exc:  # noqa: BLE001 - answered; nothing was decided
            return _count(facade, route, NEW, _failed(exc, route))
    # a batch the new model does not know: the new system answers it (404) only when it
    # owns every product; otherwise it may be legacy's

    def owner_in(of: Ownership) -> Owner:
        return of.owner_of_unknown_batch() if sku is None else of.owner(sku)

    owner = owner_in(ownership)
    if owner is not Owner.NEW:
        # the snapshot may be stale either way: a move it still shows as in progress may
        # have settled (the new write path confirms its own side in its transaction)
        held = _to_legacy_held(facade, route, body, lambda of: owner_in(of) is Owner.LEGACY)
        if held is None:
            return _count(facade, route, UNKNOWN, _unconfirmed(found))
        if isinstance(held, Response):
            return _count(facade, route, LEGACY, held)
        owner = owner_in(held)
    if owner is Owner.CHANGING:
        return _count(facade, route, CHANGING, _changing(sku, intent.ref))
    started = time.perf_counter()
    try:
        answer = facade.new_system.call(lambda: intent.decide(write_path))
    except NotOwned as refused:
        if refused.owner is Owner.LEGACY:
            held = _to_legacy_held(facade, route, body, lambda of: owner_in(of) is Owner.LEGACY)
            if isinstance(held, Response):
                return _count(facade, route, LEGACY, held)
        return _count(facade, route, CHANGING, _changing(refused.sku or None, intent.ref))
    except DomainError as refusal:
        legacy_answer = refusal_answer(refusal)
        if legacy_answer is None:
            return _count(facade, route, NEW, _failed(refusal, route))
        g.served_by = "new"
        return _count(facade, route, NEW, _answer(legacy_answer.status, legacy_answer.body))
    except Exception as exc:  # noqa: BLE001 - answered; never retried on legacy
        return _count(facade, route, NEW, _failed(exc, route))
    facade.metrics.latency.labels("new", route).observe(time.perf_counter() - started)
    g.served_by = "new"
    return _count(facade, route, NEW, _answer(answer.status, answer.body))


def _to_legacy_held(
    facade: Facade,
    route: str,
    body: bytes | None,
    legacy_owns: Callable[[Ownership], bool],
) -> Response | Ownership | None:
    """Legacy's answer, when the group's ownership read now says legacy owns the product;
    otherwise that ownership (None: it could not be read).

    The ownership row stays share-locked until legacy has answered (``held``): a move
    waits for the write, so a write the facade gives legacy under the old ownership
    commits before the move, hence before a takeover's fence. The snapshot is not enough
    (it may be older than its refresh interval), and neither is reading it just before
    proxying: a slow request would reach legacy after the fence, an ownership violation
    the client was told was accepted."""
    write_path = facade.write_path
    if write_path is None:
        return _to_legacy(facade, route, body)
    hold = write_path.held()

    def release() -> None:
        hold.__exit__(None, None, None)

    try:
        # on a serving thread, at most the new system's timeout: a hung new database
        # costs this request a 503, never a request thread
        fresh = facade.new_system.acquire(hold.__enter__, release)
    except Exception as exc:  # noqa: BLE001 - answered 503: nobody decided
        log.warning("write ownership unreadable: %s", printable(str(exc)))
        return None
    try:
        if not legacy_owns(fresh):
            return fresh
        return _to_legacy(facade, route, body)
    finally:
        facade.new_system.release(release)  # not waited for: legacy's answer is ready


def _unconfirmed(found: RouteMatch) -> Response:
    return _unavailable(f"the ownership of write group {found.group} could not be read; retry")


def _body() -> bytes:
    """The request's body, refused with legacy's 413 when it is larger than legacy takes."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise too_large()
    # one byte more than allowed: a chunked body over the limit is cut there
    request.max_content_length = MAX_BODY_BYTES + 1
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise too_large() from None
    if len(raw) > MAX_BODY_BYTES:
        raise too_large()
    return raw


def _to_legacy(facade: Facade, route: str, body: bytes | None) -> Response:
    g.served_by = "legacy"
    latency = facade.metrics.latency.labels("legacy", route)
    return facade.proxy.forward(request, body=body, observe=latency.observe)


def _answer(status: int, body: bytes) -> Response:
    return Response(body, status=status, mimetype=JSON)


def _changing(sku: str | None, ref: str | None) -> Response:
    what = f"product {sku}" if sku else f"the product of batch {ref}"
    return _unavailable(f"{what} is changing owner; retry")


def _unavailable(detail: str) -> Response:
    g.served_by = "facade"
    response = json_error(503, "service unavailable", detail)
    response.headers["Retry-After"] = RETRY_AFTER
    return response


def _failed(exc: Exception, route: str) -> Response:
    """The new system failed or timed out: it may have decided, so legacy is not asked."""
    g.served_by = "new"
    timed_out = isinstance(exc, NewSystemTimeout)
    log.warning(
        "new system %s on %s %s; not retried on legacy",
        "timed out" if timed_out else "failed",
        request.method,
        printable(request.path),
        exc_info=not timed_out,
    )
    if timed_out:
        return json_error(504, "gateway timeout", str(exc))
    return json_error(
        502,
        "bad gateway",
        f"the new system failed to answer {request.method} {printable(request.path)}",
    )


def _count(facade: Facade, route: str, owner: str, response: Response) -> Response:
    facade.metrics.write_answers.labels(route, owner, str(response.status_code)).inc()
    return response


__all__ = ["RETRY_AFTER", "serve_write"]
