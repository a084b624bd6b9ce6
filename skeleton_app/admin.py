"""The admin API under ``/_strangler/``: routes, their parity and audit, rollback, status.

Every admin endpoint needs ``Authorization: Bearer <token>`` (compared in constant time)
with the shared ``ADMIN_TOKEN`` or one operator's named token (``ADMIN_TOKENS``,
``name:token,...``); a request without a valid token gets 401 and changes nothing.
Without a configured token the admin API is off: its paths answer 404. The document of
these endpoints is ``skeleton_app.openapi.DOCUMENT`` (served at
``/_strangler/openapi.json``).

Who acted comes from the credential: a named token's name is recorded as ``by`` (a
claimed ``by`` is ignored); with the shared token the audit says so and shows the claimed
``by`` as claimed (``shared token, claimed: alice``). Every field is checked and bounded
(``by`` at most 128 characters, ``reason`` 1,000, no control characters, JSON nested at
most 32 deep): anything else is a 400.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, jsonify, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from skeleton_app.errors import json_error
from skeleton_app.facade import Facade
from skeleton_app.patterns import RESERVED_PREFIX, RouteError, has_control_characters
from skeleton_app.routes_table import (
    MAX_BY,
    MAX_REASON,
    AuditEntry,
    CutoverRefused,
    Route,
    RouteNotFound,
)
from skeleton_app.shadow_results import AA, SHADOW, Parity, StoredResult

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


def route_json(route: Route, parity: Parity, noise: Parity) -> dict[str, Any]:
    return {
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


def routes_with_parity(facade: Facade) -> list[dict[str, Any]]:
    shadow = facade.results.parity_by_route(SHADOW)
    noise = facade.results.parity_by_route(AA)
    return [
        route_json(
            r,
            shadow.get((r.method, r.pattern), Parity()),
            noise.get((r.method, r.pattern), Parity()),
        )
        for r in facade.table.list()
    ]


# -- views -----------------------------------------------------------------------------


def list_routes(facade: Facade) -> Response:
    return jsonify(
        {
            "routes": routes_with_parity(facade),
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
        route = facade.table.set(
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
    audit = facade.table.history(route.method, route.pattern)[-1]
    shadow = facade.results.parity(route.method, route.pattern, SHADOW)
    noise = facade.results.parity(route.method, route.pattern, AA)
    return jsonify({"route": route_json(route, shadow, noise), "audit": audit_json(audit)})


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
        entries = facade.table.history(method, pattern)
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
    results = facade.results.recent(method, pattern, kind, limit=int(limit))
    parity = facade.results.parity(method, pattern, kind)
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


ADMIN_ENDPOINTS: Mapping[str, Mapping[str, View]] = {
    f"{RESERVED_PREFIX}routes": {"GET": list_routes, "PUT": set_route, "DELETE": delete_route},
    f"{RESERVED_PREFIX}routes/history": {"GET": history},
    f"{RESERVED_PREFIX}routes/mismatches": {"GET": mismatches},
    f"{RESERVED_PREFIX}routes/rollback": {"POST": rollback},
    f"{RESERVED_PREFIX}status": {"GET": status},
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
