"""The admin API under ``/_strangler/``: routes, their parity and audit, rollback, status.

Every admin endpoint needs ``Authorization: Bearer <token>`` (compared in constant time)
with the shared ``ADMIN_TOKEN`` or one operator's named token (``ADMIN_TOKENS``,
``name:token,...``); a request without a valid token gets 401 and changes nothing.
Without a configured token the admin API is off: its paths answer 404. The document of
these endpoints is ``skeleton_app.openapi.DOCUMENT`` (served at
``/_strangler/openapi.json``). The pipeline's endpoints (``pipeline``, ``dead-letters``,
``dead-letters/replay``, ``anomalies``: what the operator console shows) read it through
``Facade.operations`` (built by the composition root); without it they are off (404),
and a part it cannot reach is a 503 saying which.

Who acted comes from the credential: a named token's name is recorded as ``by`` (a
claimed ``by`` is ignored); with the shared token the audit says so and shows the claimed
``by`` as claimed (``shared token, claimed: alice``). Every field is checked and bounded
(``by`` at most 128 characters, ``reason`` 1,000, no control characters, JSON nested at
most 32 deep): anything else is a 400.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import BadRequest, NotFound, RequestEntityTooLarge

from skeleton_app.errors import json_error, printable
from skeleton_app.facade import Facade
from skeleton_app.operations import Operations, OperationsUnavailable
from skeleton_app.patterns import RESERVED_PREFIX, RouteError, has_control_characters
from skeleton_app.routes_table import (
    MAX_BY,
    MAX_REASON,
    AuditEntry,
    Change,
    CutoverRefused,
    Route,
    RouteNotFound,
)
from skeleton_app.shadow_results import AA, SHADOW, Parity, StoredResult
from skeleton_app.write_path import Ownership

log = logging.getLogger(__name__)

View = Callable[[Facade], Response]

MAX_BODY_BYTES = 64 * 1024
"""Largest admin request body; a larger one (declared or streamed) gets 413."""

_SET_FIELDS = {"method", "pattern", "mode", "percent", "reason", "by", "force", "options"}
_OPTION_TYPES: Mapping[str, tuple[type, ...]] = {
    "allow_mutating_shadow": (bool,),
    "ignore_fields": (list,),
    "unordered_lists": (bool,),
    "canary_key": (str,),
    "sample_rate": (int, float, type(None)),
}


SHARED = "shared token"
"""The credential name of the shared ``ADMIN_TOKEN``."""

MAX_DEPTH = 32
"""Deepest nesting of a JSON body the admin API parses."""


def enabled(facade: Facade) -> bool:
    return bool(facade.settings.admin_token or facade.settings.admin_tokens)


def credential(facade: Facade) -> str | None:
    """The name of the credential the request carries (``SHARED`` for ``ADMIN_TOKEN``), or
    None. Every configured token is compared, in constant time each."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    offered = given.strip().encode()
    found = None
    candidates = list(facade.settings.admin_tokens)
    if facade.settings.admin_token:
        candidates.append((SHARED, facade.settings.admin_token))
    for name, token in candidates:
        if hmac.compare_digest(offered, token.encode()) and found is None:
            found = name
    return found


def authorized(facade: Facade) -> bool:
    return credential(facade) is not None


def acting(facade: Facade, claimed: str | None) -> str:
    """What the audit records as ``by``: the named token's name, or for the shared token
    ``shared token, claimed: <by>`` (cut to fit 128 characters)."""
    name = credential(facade) or "unknown"
    if name != SHARED:
        return name
    if not claimed:
        return SHARED
    shown = f"{SHARED}, claimed: {claimed}"
    return shown if len(shown) <= MAX_BY else shown[: MAX_BY - 3] + "..."


def unauthorized() -> Response:
    response = json_error(401, "unauthorized", "a valid admin bearer token is required")
    response.headers["WWW-Authenticate"] = 'Bearer realm="strangler"'
    return response


def admin_off() -> Response:
    return json_error(
        404, "not found", "the admin API is off: no admin token is configured (ADMIN_TOKEN)"
    )


# -- JSON shapes -----------------------------------------------------------------------


def route_json(
    route: Route, parity: Parity, noise: Parity, ownership: Ownership | None = None
) -> dict[str, Any]:
    """A route; a route of a write group also names its ``group`` and the group's
    ``ownership`` (None: unreadable)."""
    shown = {
        "method": route.method,
        "pattern": route.pattern,
        "mode": route.mode.value,
        "percent": route.percent,
        "setting": route.setting,
        "options": route.options.to_dict(),
        "updated_at": route.updated_at.isoformat() if route.updated_at else None,
        "updated_by": route.updated_by,
        "reason": route.reason,
        "parity": parity.to_dict(),
        "noise": noise.to_dict(),
    }
    if route.group is not None:
        shown["group"] = route.group
        shown["ownership"] = None if ownership is None else ownership_json(ownership)
    return shown


def ownership_json(ownership: Ownership) -> dict[str, Any]:
    """A write group's ownership: its rule, the rule it replaces while ``moving``, epoch."""
    return {
        "group": ownership.group,
        "rule": str(ownership.rule),
        "previous_rule": None if ownership.previous_rule is None else str(ownership.previous_rule),
        "epoch": ownership.epoch,
        "state": str(ownership.state),
        "changed_at": ownership.changed_at.isoformat() if ownership.changed_at else None,
        "changed_by": ownership.changed_by,
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "method": entry.method,
        "pattern": entry.pattern,
        "from_mode": entry.from_mode,
        "to_mode": entry.to_mode,
        "by": entry.by,
        "reason": entry.reason,
        "options": entry.options.to_dict(),
        "forced": entry.forced,
        "gate": entry.gate,
    }


def result_json(result: StoredResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "at": result.at.isoformat(),
        "kind": result.kind,
        "outcome": result.outcome,
        "path": result.path,
        "legacy_status": result.legacy_status,
        "new_status": result.new_status,
        "legacy_ms": round(result.legacy_ms, 3),
        "new_ms": None if result.new_ms is None else round(result.new_ms, 3),
        "diff": result.diff,
    }


def routes_with_parity(facade: Facade, verdicts: bool = False) -> list[dict[str, Any]]:
    """Every route with its parity (shadow results after its last move back to legacy,
    as the gate counts them) and noise; with ``verdicts`` also ``gate``: what the cutover
    gate says now about letting new answer its clients (``passed``, ``summary``; None
    without a gate)."""
    shadow = facade.results.parity_by_route(SHADOW, fresh_since=facade.table.moves_to_legacy())
    noise = facade.results.parity_by_route(AA)
    ownerships = facade.table.ownerships() if facade.table.groups else {}
    shown = []
    for r in facade.table.list():
        route = route_json(
            r,
            shadow.get((r.method, r.pattern), Parity()),
            noise.get((r.method, r.pattern), Parity()),
            None if r.group is None else ownerships.get(r.group),
        )
        if verdicts:
            verdict = facade.table.verdict(r.method, r.pattern)
            route["gate"] = (
                None if verdict is None else {"passed": verdict.passed, "summary": verdict.summary}
            )
        shown.append(route)
    return shown


def groups_json(facade: Facade) -> dict[str, Any]:
    """Every write group: its routes and its ownership."""
    ownerships = facade.table.ownerships() if facade.table.groups else {}
    return {
        name: {
            "routes": [{"method": m, "pattern": p} for m, p in group.routes],
            "ownership": ownership_json(ownerships[name]) if name in ownerships else None,
        }
        for name, group in sorted(facade.table.groups.items())
    }


# -- views -----------------------------------------------------------------------------


def list_routes(facade: Facade) -> Response:
    return jsonify(
        {
            "routes": routes_with_parity(facade, verdicts=True),
            "groups": groups_json(facade),
            "decision_parity": facade.new_system.decision_parity(),
        }
    )


def set_route(facade: Facade) -> Response:
    body = _json_object()
    unknown = sorted(set(body) - _SET_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    method = _required(body, "method", 16)
    pattern = _required(body, "pattern", 255)
    mode = _required(body, "mode", 32)
    percent = _field(body, "percent", (int, float, type(None)))
    reason = _text(body, "reason", MAX_REASON) or ""
    by = acting(facade, _text(body, "by", MAX_BY))
    force = bool(_field(body, "force", bool))
    options = _options(body.get("options"))
    try:
        change = facade.table.change(
            method,
            pattern,
            mode,
            by=by,
            reason=reason,
            percent=percent,
            options=options,
            force=force,
        )
    except CutoverRefused as refused:
        response = jsonify(
            {
                "error": "cutover refused",
                "detail": str(refused),
                "parity": refused.verdict.parity.to_dict(),
            }
        )
        response.status_code = 409
        return response
    except RouteError as exc:
        raise BadRequest(str(exc)) from None
    return jsonify(change_json(facade, change, method, pattern))


def change_json(facade: Facade, change: Change, method: str, pattern: str) -> dict[str, Any]:
    """The route asked for (``route``, ``audit``) and every route the change set
    (``moved``); for a write group also ``group`` with its ownership after the move."""
    key = (method.strip().upper(), pattern)
    route = next((r for r in change.routes if (r.method, r.pattern) == key), change.routes[0])
    audit = facade.table.history(route.method, route.pattern)[-1]
    shadow = facade.results.parity(
        route.method,
        route.pattern,
        SHADOW,
        after=facade.table.last_move_to_legacy(route.method, route.pattern),
    )
    noise = facade.results.parity(route.method, route.pattern, AA)
    shown: dict[str, Any] = {
        "route": route_json(route, shadow, noise, change.ownership),
        "audit": audit_json(audit),
        "moved": [{"method": r.method, "pattern": r.pattern} for r in change.routes],
    }
    if change.group is not None and change.ownership is not None:
        shown["group"] = {
            "name": change.group,
            "setting": route.setting,
            "ownership": ownership_json(change.ownership),
            "gate": change.gate,
            "forced": change.forced,
        }
    return shown


def delete_route(facade: Facade) -> Response:
    body = _json_object()
    unknown = sorted(set(body) - {"method", "pattern", "reason", "by"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    method = _required(body, "method", 16)
    pattern = _required(body, "pattern", 255)
    reason = _text(body, "reason", MAX_REASON) or ""
    by = acting(facade, _text(body, "by", MAX_BY))
    try:
        entry = facade.table.delete(method, pattern, by=by, reason=reason)
    except RouteNotFound as exc:
        return json_error(404, "not found", str(exc))
    except RouteError as exc:
        raise BadRequest(str(exc)) from None
    return jsonify(
        {"deleted": {"method": entry.method, "pattern": entry.pattern}, "audit": audit_json(entry)}
    )


def history(facade: Facade) -> Response:
    method = _query(request.args.get("method"), "method", 16) or None
    pattern = _query(request.args.get("pattern"), "pattern", 255) or None
    try:
        if method is not None and pattern is not None:
            facade.table.require_known(method, pattern)
        entries = facade.table.history(method, pattern)
    except RouteNotFound as exc:
        return json_error(404, "not found", str(exc))
    except RouteError as exc:
        raise BadRequest(str(exc)) from None
    return jsonify({"entries": [audit_json(e) for e in entries]})


def mismatches(facade: Facade) -> Response:
    method = (_query(request.args.get("method"), "method", 16) or "").upper()
    pattern = _query(request.args.get("pattern"), "pattern", 255) or ""
    if not method or not pattern:
        raise BadRequest("query parameters method and pattern are required")
    kind = request.args.get("kind", SHADOW)
    if kind not in (SHADOW, AA):
        raise BadRequest("kind must be shadow or aa")
    limit = request.args.get("limit", "10")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise BadRequest("limit must be an integer from 1 to 100")
    try:
        method, pattern = facade.table.require_known(method, pattern)
    except RouteNotFound as exc:
        return json_error(404, "not found", str(exc))
    except RouteError as exc:
        raise BadRequest(str(exc)) from None
    results = facade.results.recent(method, pattern, kind, limit=int(limit))
    fresh = facade.table.last_move_to_legacy(method, pattern) if kind == SHADOW else None
    parity = facade.results.parity(method, pattern, kind, after=fresh)
    return jsonify(
        {
            "method": method,
            "pattern": pattern,
            "kind": kind,
            "parity": parity.to_dict(),
            "mismatches": [result_json(r) for r in results],
        }
    )


def rollback(facade: Facade) -> Response:
    body = _json_object()
    unknown = sorted(set(body) - {"method", "pattern", "reason", "by"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    method = _text(body, "method", 16)
    pattern = _text(body, "pattern", 255)
    if (method is None) != (pattern is None):
        raise BadRequest("give both method and pattern, or neither (every route)")
    reason = _text(body, "reason", MAX_REASON) or ""
    by = acting(facade, _text(body, "by", MAX_BY))
    routes = None if method is None or pattern is None else [(method, pattern)]
    try:
        changed = facade.table.rollback(by=by, reason=reason, routes=routes)
    except RouteNotFound as exc:
        return json_error(404, "not found", str(exc))
    except RouteError as exc:
        raise BadRequest(str(exc)) from None
    return jsonify({"rolled_back": [{"method": r.method, "pattern": r.pattern} for r in changed]})


def status(facade: Facade) -> Response:
    guard = facade.guard.status()
    return jsonify(
        {
            "lag": {
                "enabled": facade.guard.enabled,
                "max_lag_seconds": facade.settings.max_lag,
                **guard.to_dict(),
            },
            "shadow": facade.shadow.stats(),
            "gate": {
                "min_parity": facade.settings.gate.min_parity,
                "min_samples": facade.settings.gate.min_samples,
                "window_seconds": facade.settings.gate.window.seconds,
                "window_samples": facade.settings.gate.window.max_samples,
            },
        }
    )


def pipeline(facade: Facade) -> Response:
    """The lag (now, and its samples over the last ``minutes``) and the rest of the
    pipeline as far as it can be read (``errors`` says what could not)."""
    minutes = _bounded_int(request.args.get("minutes", "60"), "minutes", 1, 24 * 60)
    guard = facade.guard.status()
    history = facade.lag_history
    samples: list[dict[str, object]] = []
    errors: dict[str, str] = {}
    if history is not None:
        try:
            samples = [s.to_dict() for s in history.samples(minutes * 60.0)]
        except SQLAlchemyError as exc:
            errors["history"] = f"cannot read the lag samples: {_first_line(exc)}"
    parts: dict[str, Any] = {"bridge": None, "consumer": None, "queue": None, "anomalies": None}
    if facade.operations is None:
        errors["pipeline"] = "the facade was started without the pipeline's connections"
    else:
        try:
            read = facade.operations.pipeline()
        except OperationsUnavailable as exc:
            errors["pipeline"] = str(exc)
        else:
            errors.update(read.pop("errors", {}))
            parts.update(read)
    return jsonify(
        {
            "lag": {
                "enabled": facade.guard.enabled,
                "max_lag_seconds": facade.settings.max_lag,
                **guard.to_dict(),
            },
            "history": {
                "interval_seconds": None if history is None else history.interval,
                "minutes": minutes,
                "samples": samples,
            },
            **parts,
            "errors": errors,
        }
    )


def dead_letters(facade: Facade) -> Response:
    limit = _bounded_int(request.args.get("limit", "100"), "limit", 1, 1000)
    operations = _operations(facade)
    try:
        return jsonify(operations.dead_letters(limit))
    except OperationsUnavailable as exc:
        return json_error(503, "service unavailable", str(exc))


def replay_dead_letters(facade: Facade) -> Response:
    """Replay the dead letters named by ``ids`` (as ``strangler dlq replay --id``); the
    reason is required, and who replayed what, why, and the outcome go to the log."""
    body = _json_object()
    unknown = sorted(set(body) - {"ids", "reason", "by"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    ids = body.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_REPLAY:
        raise BadRequest(f"field 'ids' must be a list of 1 to {MAX_REPLAY} message ids")
    for value in ids:
        if not isinstance(value, str) or not value:
            raise BadRequest("field 'ids' must hold non-empty strings")
        _checked(value, "a message id", 255)
    reason = (_text(body, "reason", MAX_REASON) or "").strip()
    if not reason:
        raise BadRequest("field 'reason' is required: say why the dead letters are replayed")
    by = acting(facade, _text(body, "by", MAX_BY))
    operations = _operations(facade)
    try:
        report = operations.replay(list(dict.fromkeys(ids)))
    except OperationsUnavailable as exc:
        return json_error(503, "service unavailable", str(exc))
    log.warning(
        "dead letters replayed by %s (%s): %d applied, %d applied before, %d failed again, "
        "%d not found: %s",
        printable(by),
        printable(reason),
        len(report.get("applied", [])),
        len(report.get("already_applied", [])),
        len(report.get("failed", [])),
        len(report.get("not_found", [])),
        printable(", ".join(ids)),
    )
    return jsonify({**report, "by": by, "reason": reason})


def anomalies(facade: Facade) -> Response:
    limit = _bounded_int(request.args.get("limit", "50"), "limit", 1, 1000)
    kind = _query(request.args.get("kind"), "kind", 64) or None
    operations = _operations(facade)
    try:
        return jsonify(operations.anomalies(limit, kind))
    except OperationsUnavailable as exc:
        return json_error(503, "service unavailable", str(exc))


MAX_REPLAY = 100
"""Most dead letters one replay request names."""


def _operations(facade: Facade) -> Operations:
    """The pipeline's operations; without them (like the admin API without a token) these
    endpoints are off: 404."""
    if facade.operations is None:
        raise NotFound(
            "the pipeline endpoints are off: the facade was started without the pipeline's "
            "connections (strangler serve gives them: BROKER_URL, LEGACY_DB_URL)"
        )
    return facade.operations


def _bounded_int(value: str, name: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(value)


def _first_line(exc: BaseException) -> str:
    return printable((str(exc).strip().splitlines() or [type(exc).__name__])[0])


ADMIN_ENDPOINTS: Mapping[str, Mapping[str, View]] = {
    f"{RESERVED_PREFIX}routes": {"GET": list_routes, "PUT": set_route, "DELETE": delete_route},
    f"{RESERVED_PREFIX}routes/history": {"GET": history},
    f"{RESERVED_PREFIX}routes/mismatches": {"GET": mismatches},
    f"{RESERVED_PREFIX}routes/rollback": {"POST": rollback},
    f"{RESERVED_PREFIX}status": {"GET": status},
    f"{RESERVED_PREFIX}pipeline": {"GET": pipeline},
    f"{RESERVED_PREFIX}dead-letters": {"GET": dead_letters},
    f"{RESERVED_PREFIX}dead-letters/replay": {"POST": replay_dead_letters},
    f"{RESERVED_PREFIX}anomalies": {"GET": anomalies},
}
"""Admin path -> method -> view; all need the token."""


# -- input -----------------------------------------------------------------------------


def _json_object() -> dict[str, Any]:
    # Proxied requests stream their bodies to legacy, which sets its own limit; the admin
    # API reads bodies itself, so it refuses large ones (413) without reading them whole.
    # One byte more than allowed: a chunked body over the limit is cut there silently.
    too_large = RequestEntityTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise too_large
    request.max_content_length = MAX_BODY_BYTES + 1
    if len(request.get_data(cache=True)) > MAX_BODY_BYTES:
        raise too_large
    if _nesting(request.get_data(cache=True)) > MAX_DEPTH:
        raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _nesting(data: bytes) -> int:
    """How deep ``data``'s JSON arrays and objects nest (strings skipped), without parsing
    it: Python's JSON parser recurses, and would fail (500) on a deep body."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _text(body: Mapping[str, Any], name: str, limit: int, required: bool = False) -> str | None:
    """A string field: at most ``limit`` characters, no control characters."""
    value: str | None = _field(body, name, str, required=required)
    if value is None:
        return None
    return _checked(value, f"field {name!r}", limit)


def _required(body: Mapping[str, Any], name: str, limit: int) -> str:
    value = _text(body, name, limit, required=True)
    assert value is not None  # required: _field raised otherwise
    return value


def _query(value: str | None, name: str, limit: int) -> str | None:
    return None if value is None else _checked(value, f"query parameter {name!r}", limit)


def _checked(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        raise BadRequest(f"{what} is longer than {limit} characters")
    if has_control_characters(value):
        raise BadRequest(f"{what} must not hold control characters (NUL, CR, LF, ESC ...)")
    return value


def _field(
    body: Mapping[str, Any], name: str, types: type | tuple[type, ...], required: bool = False
) -> Any:
    if name not in body:
        if required:
            raise BadRequest(f"field {name!r} is required")
        return None
    value = body[name]
    allowed = types if isinstance(types, tuple) else (types,)
    bad_bool = isinstance(value, bool) and bool not in allowed
    if bad_bool or not isinstance(value, allowed):
        raise BadRequest(f"field {name!r} has the wrong type")
    return value


def _options(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest("field 'options' must be an object")
    for name, value in raw.items():
        types = _OPTION_TYPES.get(name)
        if types is None:
            raise BadRequest(f"unknown route option {name!r}")
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise BadRequest(f"route option {name!r} has the wrong type")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise BadRequest("route option 'ignore_fields' must be a list of strings")
    return dict(raw)
