"""The OpenAPI 3.1 document of the facade's own endpoints (and the routes it can serve).

Served at ``/_strangler/openapi.json``; ``docs/openapi.json`` is this document, written by
``python -c "from skeleton_app.openapi import render; print(render(), end='')"`` (a test
keeps the two equal).
"""

from __future__ import annotations

import copy
import json
from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_SERVED_BY = {"$ref": "#/components/headers/ServedBy"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Served-By": _SERVED_BY},
        "content": {"application/json": {"schema": schema}},
    }


def _error(description: str) -> dict[str, Any]:
    return _json(_ERROR, description)


_ADMIN_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "404": {"$ref": "#/components/responses/AdminOff"},
}

_CHECK = {
    "type": "object",
    "required": ["ok", "detail"],
    "properties": {
        "ok": {"type": "boolean"},
        "detail": {"type": "string"},
        "age_seconds": {"type": ["number", "null"]},
    },
}

_READINESS = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "degraded"]},
        "checks": {
            "type": "object",
            "required": ["new_database", "route_table"],
            "properties": {"new_database": _CHECK, "route_table": _CHECK},
        },
    },
}

_PARITY = {
    "type": "object",
    "required": ["matches", "mismatches", "errors", "samples", "percent"],
    "additionalProperties": False,
    "properties": {
        "matches": {"type": "integer", "minimum": 0},
        "mismatches": {"type": "integer", "minimum": 0},
        "errors": {"type": "integer", "minimum": 0},
        "samples": {"type": "integer", "minimum": 0},
        "percent": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 100,
            "description": "matches / samples * 100; null without samples",
        },
    },
}

_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "allow_mutating_shadow": {"type": "boolean"},
        "ignore_fields": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "unordered_lists": {"type": "boolean"},
        "canary_key": {"type": "string", "pattern": "^(path(:.+)?|header:.+|query:.+|cookie:.+)$"},
        "sample_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    },
}

_MODE = {"type": "string", "enum": ["legacy", "aa", "shadow", "canary", "new"]}

_ROUTE = {
    "type": "object",
    "required": [
        "method",
        "pattern",
        "mode",
        "percent",
        "setting",
        "options",
        "updated_at",
        "updated_by",
        "reason",
        "parity",
        "noise",
    ],
    "additionalProperties": False,
    "properties": {
        "method": {"type": "string"},
        "pattern": {"type": "string"},
        "mode": _MODE,
        "percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "setting": {"type": "string", "examples": ["canary 10"]},
        "options": {"$ref": "#/components/schemas/RouteOptions"},
        "updated_at": {"type": ["string", "null"], "format": "date-time"},
        "updated_by": {"type": ["string", "null"]},
        "reason": {"type": ["string", "null"]},
        "parity": {"$ref": "#/components/schemas/Parity"},
        "noise": {"$ref": "#/components/schemas/Parity"},
        "group": {
            "type": "string",
            "description": "only on a route of a write group: the group it moves with",
        },
        "ownership": {
            "oneOf": [{"$ref": "#/components/schemas/Ownership"}, {"type": "null"}],
            "description": "only on a route of a write group: the group's ownership "
            "(null: unreadable)",
        },
        "gate": {
            "oneOf": [{"$ref": "#/components/schemas/GateVerdict"}, {"type": "null"}],
            "description": "only in the route list: what the cutover gate says now about "
            "letting new answer this route's clients (null: no gate)",
        },
    },
}

_GATE_VERDICT = {
    "type": "object",
    "required": ["passed", "summary"],
    "additionalProperties": False,
    "properties": {
        "passed": {"type": "boolean"},
        "summary": {
            "type": "string",
            "description": "the evidence (shadow parity, or a write group's decision parity "
            "and unresolved problems) and the thresholds, as the audit would record it",
        },
    },
}

_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

_PIPELINE = {
    "type": "object",
    "required": ["lag", "history", "bridge", "consumer", "queue", "anomalies", "errors"],
    "properties": {
        "lag": {"$ref": "#/components/schemas/Status/properties/lag"},
        "history": {
            "type": "object",
            "required": ["interval_seconds", "minutes", "samples"],
            "properties": {
                "interval_seconds": _NULLABLE_NUMBER,
                "minutes": {"type": "integer"},
                "samples": {
                    "type": "array",
                    "description": "the end-to-end lag as the facade measured it, oldest "
                    "first, one per interval (null: not measurable then)",
                    "items": {
                        "type": "object",
                        "required": ["at", "lag_seconds"],
                        "properties": {
                            "at": {"type": "string", "format": "date-time"},
                            "lag_seconds": _NULLABLE_NUMBER,
                        },
                    },
                },
            },
        },
        "bridge": {
            "type": ["object", "null"],
            "description": "as `strangler bridge status --json` (null: unknown, see errors)",
            "properties": {
                "pending": {"type": "integer"},
                "oldest_pending_age_s": _NULLABLE_NUMBER,
                "last_confirmed_pos": {"type": "integer"},
                "last_confirmed_at": _NULLABLE_TIME,
                "throughput_per_s": {"type": "number"},
            },
        },
        "consumer": {
            "type": ["object", "null"],
            "required": ["sources", "lag_seconds", "outbox_backlog", "dead_in_database"],
            "properties": {
                "sources": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "source",
                            "current_as_of",
                            "heartbeat_at",
                            "heartbeat_age_seconds",
                            "applied_at",
                            "lag_seconds",
                        ],
                        "properties": {
                            "source": {"type": "string"},
                            "current_as_of": _NULLABLE_TIME,
                            "newest_commit_at": _NULLABLE_TIME,
                            "heartbeat_at": _NULLABLE_TIME,
                            "heartbeat_age_seconds": _NULLABLE_NUMBER,
                            "applied_at": _NULLABLE_TIME,
                            "lag_seconds": _NULLABLE_NUMBER,
                        },
                    },
                },
                "lag_seconds": _NULLABLE_NUMBER,
                "outbox_backlog": {"type": "integer"},
                "dead_in_database": {"type": "integer"},
            },
        },
        "queue": {
            "type": ["object", "null"],
            "required": ["name", "depth", "dead_letter_queue", "dead_letters"],
            "properties": {
                "name": {"type": "string"},
                "depth": {"type": "integer"},
                "dead_letter_queue": {"type": "string"},
                "dead_letters": {"type": "integer"},
            },
        },
        "anomalies": {
            "type": ["object", "null"],
            "description": "anomaly kind -> count",
            "additionalProperties": {"type": "integer"},
        },
        "errors": {
            "type": "object",
            "description": "part -> why it could not be read",
            "additionalProperties": {"type": "string"},
        },
    },
}

_DEAD_LETTER = {
    "type": "object",
    "required": [
        "message_id",
        "routing_key",
        "seq",
        "attempts",
        "first_failed_at",
        "error_type",
        "error",
    ],
    "properties": {
        "message_id": {"type": ["string", "null"]},
        "routing_key": {"type": "string"},
        "seq": {"description": "the change's position in its stream (x-legacy-seq)"},
        "attempts": {"description": "x-attempts"},
        "first_failed_at": {"description": "x-first-failed-at"},
        "error_type": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"], "description": "why it failed"},
    },
}

_PIPELINE_OFF = "The admin API is off, or the facade was started without the pipeline's connections"


_OWNERSHIP = {
    "type": "object",
    "required": ["group", "rule", "previous_rule", "epoch", "state", "changed_at", "changed_by"],
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string", "examples": ["allocation"]},
        "rule": {
            "type": "string",
            "examples": ["legacy", "shadow", "canary 30", "new"],
            "description": "which products the new system owns",
        },
        "previous_rule": {
            "type": ["string", "null"],
            "description": "while moving: the rule the products were settled under",
        },
        "epoch": {"type": "integer", "minimum": 0, "description": "one more with every move"},
        "state": {
            "type": "string",
            "enum": ["active", "moving"],
            "description": "moving: products the two rules disagree about are changing "
            "hands (their writes answer 503) until the move's fence comes back",
        },
        "changed_at": {"type": ["string", "null"], "format": "date-time"},
        "changed_by": {"type": ["string", "null"]},
    },
}

_MOVED = {
    "type": "array",
    "description": "every route the change set: one, or every route of a write group",
    "items": {
        "type": "object",
        "required": ["method", "pattern"],
        "properties": {"method": {"type": "string"}, "pattern": {"type": "string"}},
    },
}

_GROUPS = {
    "type": "object",
    "description": "Write group name -> its routes and its ownership (null: unreadable).",
    "additionalProperties": {
        "type": "object",
        "required": ["routes", "ownership"],
        "properties": {
            "routes": _MOVED,
            "ownership": {"oneOf": [{"$ref": "#/components/schemas/Ownership"}, {"type": "null"}]},
        },
    },
}

_AUDIT = {
    "type": "object",
    "required": [
        "id",
        "at",
        "method",
        "pattern",
        "from_mode",
        "to_mode",
        "by",
        "reason",
        "options",
        "forced",
        "gate",
    ],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "method": {"type": "string"},
        "pattern": {"type": "string"},
        "from_mode": {"type": ["string", "null"]},
        "to_mode": {"type": "string"},
        "by": {"type": "string"},
        "reason": {"type": "string"},
        "options": {"$ref": "#/components/schemas/RouteOptions"},
        "forced": {"type": "boolean"},
        "gate": {"type": ["string", "null"]},
    },
}

_RESULT = {
    "type": "object",
    "required": [
        "id",
        "at",
        "kind",
        "outcome",
        "path",
        "legacy_status",
        "new_status",
        "legacy_ms",
        "new_ms",
        "diff",
    ],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "kind": {"type": "string", "enum": ["shadow", "aa"]},
        "outcome": {"type": "string", "enum": ["match", "mismatch", "error"]},
        "path": {"type": "string"},
        "legacy_status": {"type": "integer"},
        "new_status": {"type": ["integer", "null"]},
        "legacy_ms": {"type": "number"},
        "new_ms": {"type": ["number", "null"]},
        "diff": {"type": ["string", "null"]},
    },
}

_SET_REQUEST = {
    "type": "object",
    "required": ["method", "pattern", "mode"],
    "additionalProperties": False,
    "properties": {
        "method": {"type": "string", "maxLength": 16, "examples": ["GET"]},
        "pattern": {
            "type": "string",
            "maxLength": 255,
            "examples": ["/allocations/<orderid>"],
            "description": "at most one variable per segment, a <path:...> variable "
            "only as the last segment (linear-time matching)",
        },
        "mode": {
            "type": "string",
            "maxLength": 32,
            "examples": ["shadow", "canary 10"],
            "description": "legacy, aa, shadow, canary (with percent, or 'canary N') or new; "
            "a route of a write group moves its whole group (aa is refused for it)",
        },
        "percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "reason": {
            "type": "string",
            "maxLength": 1000,
            "description": "required with force; no control characters",
        },
        "by": {
            "type": "string",
            "maxLength": 128,
            "description": "who, as claimed: with the shared token the audit records "
            "'shared token, claimed: <by>'; a named token's name "
            "replaces it",
        },
        "force": {
            "type": "boolean",
            "description": "let new answer clients (canary above 0, new) although "
            "the cutover gate refuses or its thresholds are below "
            "the floor; needs a reason; audited as forced",
        },
        "options": {
            "$ref": "#/components/schemas/RouteOptions",
            "description": "options to change; the others are kept",
        },
    },
}

_ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}]

_TEXT = {"type": "string", "minLength": 1, "maxLength": 64}
_QTY = {"type": "integer", "minimum": 1, "maximum": 2147483647}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _write(
    summary: str,
    operation: str,
    body: dict[str, Any],
    answers: dict[str, dict[str, Any]],
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A write route of write group allocation: legacy's answers, whoever decides."""
    return {
        "summary": summary,
        "description": "A route of write group allocation. Decided by the owner of the "
        "product (legacy, or the new system, with legacy's exact answers); 503 with "
        "Retry-After while the product changes hands.",
        "operationId": operation,
        **({"parameters": parameters} if parameters else {}),
        "requestBody": _body(body),
        "responses": {
            **answers,
            "413": _error("Body over 1 MiB"),
            "502": _error("The system deciding could not be reached or failed"),
            "503": {
                "description": "The product is changing owner (or the group's ownership "
                "could not be read yet); nothing was decided: retry",
                "headers": {
                    "X-Served-By": _SERVED_BY,
                    "Retry-After": {"schema": {"type": "integer", "const": 1}},
                },
                "content": {"application/json": {"schema": _ERROR}},
            },
            "504": _error("The system deciding did not answer in time; it may have decided"),
        },
    }


_OUT_OF_STOCK = {
    "allOf": [
        _ERROR,
        {"type": "object", "properties": {"sku": {"type": "string"}}},
    ]
}

_WRITE_PATHS: dict[str, Any] = {
    "/batches": {
        "post": _write(
            "Add a batch of a product",
            "addBatch",
            {
                "type": "object",
                "required": ["ref", "sku", "qty", "eta"],
                "properties": {
                    "ref": _TEXT,
                    "sku": _TEXT,
                    "qty": _QTY,
                    "eta": {"type": ["string", "null"], "format": "date"},
                },
            },
            {
                "201": _json(
                    {
                        "type": "object",
                        "required": ["ref", "sku", "qty", "eta"],
                        "properties": {
                            "ref": {"type": "string"},
                            "sku": {"type": "string"},
                            "qty": {"type": "integer"},
                            "eta": {"type": ["string", "null"], "format": "date"},
                        },
                    },
                    "Created",
                ),
                "400": _error("Invalid body"),
                "409": _error("Duplicate batch"),
            },
        )
    },
    "/batches/{ref}": {
        "patch": _write(
            "Change a batch's quantity; lines that no longer fit are reallocated",
            "changeBatchQuantity",
            {
                "type": "object",
                "required": ["qty"],
                "properties": {"qty": {**_QTY, "minimum": 0}},
            },
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["ref", "qty", "reallocated", "unallocated"],
                        "properties": {
                            "ref": {"type": "string"},
                            "qty": {"type": "integer"},
                            "reallocated": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["orderid", "sku", "batchref"],
                                    "properties": {
                                        "orderid": {"type": "string"},
                                        "sku": {"type": "string"},
                                        "batchref": {"type": "string"},
                                    },
                                },
                            },
                            "unallocated": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["orderid", "sku"],
                                    "properties": {
                                        "orderid": {"type": "string"},
                                        "sku": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                    "Changed",
                ),
                "400": _error("Invalid body"),
                "404": _error("No such batch"),
            },
            [{"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}],
        )
    },
    "/allocate": {
        "post": _write(
            "Allocate an order line to the first batch with room",
            "allocate",
            {
                "type": "object",
                "required": ["orderid", "sku", "qty"],
                "properties": {"orderid": _TEXT, "sku": _TEXT, "qty": _QTY},
            },
            {
                "201": _json(
                    {
                        "type": "object",
                        "required": ["batchref"],
                        "properties": {"batchref": {"type": "string"}},
                    },
                    "Allocated",
                ),
                "400": _error("Invalid body or unknown sku"),
                "409": _json(_OUT_OF_STOCK, "Out of stock (with the sku) or already allocated"),
            },
        )
    },
    "/deallocate": {
        "post": _write(
            "Remove an order's allocated line of a product",
            "deallocate",
            {
                "type": "object",
                "required": ["orderid", "sku"],
                "properties": {"orderid": _TEXT, "sku": _TEXT},
            },
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["orderid", "sku", "batchref"],
                        "properties": {
                            "orderid": {"type": "string"},
                            "sku": {"type": "string"},
                            "batchref": {"type": "string"},
                        },
                    },
                    "Deallocated",
                ),
                "400": _error("Invalid body or unknown sku"),
                "404": _error("The order has no allocation of that sku"),
            },
        )
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Strangler facade",
        "version": "0.3.0",
        "description": (
            "The facade's own endpoints under /_strangler/, the read route it can serve "
            "from the new system and the write routes of write group allocation, decided "
            "by the product's owner. Every other path is proxied to the legacy system "
            "unchanged. "
            "Admin endpoints need 'Authorization: Bearer <token>', the shared ADMIN_TOKEN or "
            "an operator's named token (ADMIN_TOKENS); without a configured token they "
            'answer 404. Every error is JSON {"error", "detail"}. Prometheus metrics '
            "are at /metrics (text format)."
        ),
    },
    "paths": {
        "/allocations/{orderid}": {
            "get": {
                "summary": "An order's allocations, from legacy or the new system",
                "description": "Identical JSON from both systems; X-Served-By says which.",
                "operationId": "getAllocations",
                "parameters": [
                    {
                        "name": "orderid",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(
                        {"type": "array", "items": {"$ref": "#/components/schemas/Allocation"}},
                        "Allocated lines, ordered by sku then batchref",
                    ),
                    "404": _error("No allocations for this order"),
                    "502": _error("Legacy could not be reached"),
                    "504": _error("Legacy did not answer in time"),
                },
            }
        },
        **_WRITE_PATHS,
        "/_strangler/health": {
            "get": {
                "summary": "Liveness of the facade",
                "operationId": "health",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "The facade is up",
                    )
                },
            }
        },
        "/_strangler/ready": {
            "get": {
                "summary": "Readiness of the facade: what is degraded (health stays liveness)",
                "operationId": "ready",
                "responses": {
                    "200": _json(_READINESS, "Ready: the new database and the route table work"),
                    "503": _json(_READINESS, "Degraded: the checks that fail say why"),
                },
            }
        },
        "/_strangler/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            }
        },
        "/_strangler/routes": {
            "get": {
                "summary": "Every route, its mode, options, shadow parity and A/A noise; the "
                "write groups and their ownership, and the write routes' decision parity",
                "operationId": "listRoutes",
                "security": _ADMIN,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["routes", "groups", "decision_parity"],
                            "properties": {
                                "routes": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Route"},
                                },
                                "groups": _GROUPS,
                                "decision_parity": {
                                    "type": "object",
                                    "description": "Per write route (and 'unclassified'): "
                                    "legacy decisions the new rules took the same way "
                                    "(agree) and differently (differ).",
                                    "additionalProperties": {
                                        "type": "object",
                                        "required": ["agree", "differ", "samples", "percent"],
                                        "properties": {
                                            "agree": {"type": "integer"},
                                            "differ": {"type": "integer"},
                                            "samples": {"type": "integer"},
                                            "percent": {"type": "number"},
                                        },
                                    },
                                },
                            },
                        },
                        "The route table",
                    ),
                    **_ADMIN_ERRORS,
                },
            },
            "put": {
                "summary": "Set a route's mode and options (audited)",
                "description": "A move that lets new answer clients passes the cutover gate "
                "first (shadow parity over the window), unless force is true; the audit says "
                "so. A route of a write group moves the whole group in one transaction (every "
                "route, its audit entry and the group's ownership), judged on the group's "
                "decision parity and refused while unresolved ownership violations or echo "
                "anomalies exist.",
                "operationId": "setRoute",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/SetRoute"}}
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["route", "audit", "moved"],
                            "properties": {
                                "route": {"$ref": "#/components/schemas/Route"},
                                "audit": {"$ref": "#/components/schemas/AuditEntry"},
                                "moved": _MOVED,
                                "group": {
                                    "type": "object",
                                    "description": "only when a write group moved",
                                    "required": ["name", "setting", "ownership", "gate", "forced"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "setting": {"type": "string"},
                                        "ownership": {"$ref": "#/components/schemas/Ownership"},
                                        "gate": {"type": ["string", "null"]},
                                        "forced": {"type": "boolean"},
                                    },
                                },
                            },
                        },
                        "The route as set and its audit entry; every route moved",
                    ),
                    "400": _error(
                        "Invalid change (unknown mode, route, option, a field "
                        "too long or with control characters, aa or options for a route of "
                        "a write group ...)"
                    ),
                    "409": _json(
                        {
                            "allOf": [
                                _ERROR,
                                {
                                    "type": "object",
                                    "required": ["parity"],
                                    "properties": {
                                        "parity": {"$ref": "#/components/schemas/Parity"}
                                    },
                                },
                            ]
                        },
                        "The cutover gate refused the move",
                    ),
                    **_ADMIN_ERRORS,
                },
            },
            "delete": {
                "summary": "Delete a stored route (audited)",
                "description": "Its paths are then served like any other (from legacy). "
                "A route whose pattern is no longer accepted can be deleted; a route of a "
                "write group cannot (it moves only with its group).",
                "operationId": "deleteRoute",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["method", "pattern"],
                                "additionalProperties": False,
                                "properties": {
                                    "method": {"type": "string", "maxLength": 16},
                                    "pattern": {"type": "string", "maxLength": 255},
                                    "reason": {"type": "string", "maxLength": 1000},
                                    "by": {"type": "string", "maxLength": 128},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["deleted", "audit"],
                            "properties": {
                                "deleted": {
                                    "type": "object",
                                    "required": ["method", "pattern"],
                                    "properties": {
                                        "method": {"type": "string"},
                                        "pattern": {"type": "string"},
                                    },
                                },
                                "audit": {"$ref": "#/components/schemas/AuditEntry"},
                            },
                        },
                        "The deleted route and its audit entry (to_mode: deleted)",
                    ),
                    "400": _error("Invalid request"),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _error("No such route is stored, or the admin API is off"),
                },
            },
        },
        "/_strangler/routes/history": {
            "get": {
                "summary": "The audit trail, oldest first",
                "operationId": "routeHistory",
                "security": _ADMIN,
                "parameters": [
                    {"name": "method", "in": "query", "schema": {"type": "string"}},
                    {"name": "pattern", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["entries"],
                            "properties": {
                                "entries": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/AuditEntry"},
                                }
                            },
                        },
                        "Audit entries",
                    ),
                    "400": _error("Invalid parameters (too long, control characters ...)"),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _error(
                        "Unknown route pattern (the detail names the known routes), or the "
                        "admin API is off"
                    ),
                },
            }
        },
        "/_strangler/routes/mismatches": {
            "get": {
                "summary": "A route's parity and its newest mismatches and errors, with diffs",
                "operationId": "routeMismatches",
                "security": _ADMIN,
                "parameters": [
                    {
                        "name": "method",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "pattern",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "kind",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["shadow", "aa"], "default": "shadow"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["method", "pattern", "kind", "parity", "mismatches"],
                            "properties": {
                                "method": {"type": "string"},
                                "pattern": {"type": "string"},
                                "kind": {"type": "string", "enum": ["shadow", "aa"]},
                                "parity": {"$ref": "#/components/schemas/Parity"},
                                "mismatches": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/ShadowResult"},
                                },
                            },
                        },
                        "Newest first",
                    ),
                    "400": _error("Missing or invalid parameters"),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _error(
                        "Unknown route pattern (the detail names the known routes), or the "
                        "admin API is off"
                    ),
                },
            }
        },
        "/_strangler/routes/rollback": {
            "post": {
                "summary": "Serve one route, or every route not on legacy, from legacy (a "
                "route of a write group takes its whole group back)",
                "operationId": "rollback",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "method": {"type": "string"},
                                    "pattern": {"type": "string"},
                                    "reason": {"type": "string"},
                                    "by": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["rolled_back"],
                            "properties": {
                                "rolled_back": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["method", "pattern"],
                                        "properties": {
                                            "method": {"type": "string"},
                                            "pattern": {"type": "string"},
                                        },
                                    },
                                }
                            },
                        },
                        "The routes set to legacy",
                    ),
                    "400": _error("Invalid request"),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _error(
                        "Unknown route pattern (the detail names the known routes), or the "
                        "admin API is off"
                    ),
                },
            }
        },
        "/_strangler/ui": {
            "get": {
                "summary": "The operator console (a static page; its script calls this API)",
                "description": "Needs no token to load: it holds no data. The operator types "
                "the admin token into its login form; the page keeps it in the tab's "
                "sessionStorage and sends it as a bearer token to the endpoints below. Served "
                "with a Content-Security-Policy allowing only its own files, "
                "X-Frame-Options DENY and nosniff.",
                "operationId": "console",
                "responses": {
                    "200": {
                        "description": "The console's page",
                        "headers": {"X-Served-By": _SERVED_BY},
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/_strangler/pipeline": {
            "get": {
                "summary": "The pipeline: end-to-end lag now and over time, the bridge's "
                "position and pending changes, the consumer's progress and heartbeat age, "
                "its queue and dead letters, the outbox, anomaly counts",
                "description": "What `strangler status` and `strangler bridge status` show; a "
                "part that cannot be read is null, with the reason in errors.",
                "operationId": "pipeline",
                "security": _ADMIN,
                "parameters": [
                    {
                        "name": "minutes",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1440, "default": 60},
                    }
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Pipeline"}, "The pipeline"),
                    "400": _error("Invalid parameters"),
                    **_ADMIN_ERRORS,
                },
            }
        },
        "/_strangler/dead-letters": {
            "get": {
                "summary": "The consumer's dead letters with why they failed (they stay)",
                "description": "As `strangler dlq list`.",
                "operationId": "deadLetters",
                "security": _ADMIN,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["queue", "depth", "dead_letters"],
                            "properties": {
                                "queue": {"type": "string"},
                                "depth": {"type": "integer"},
                                "dead_letters": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/DeadLetter"},
                                },
                            },
                        },
                        "The dead-letter queue",
                    ),
                    "400": _error("Invalid parameters"),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _error(_PIPELINE_OFF),
                    "503": _error("The broker could not be reached"),
                },
            }
        },
        "/_strangler/dead-letters/replay": {
            "post": {
                "summary": "Replay dead letters by message id (a reason is required)",
                "description": "As `strangler dlq replay --id ...`: applied in stream order, "
                "each exactly once; one that fails again goes back with its new reason. Who "
                "replayed what and why is logged by the facade.",
                "operationId": "replayDeadLetters",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["ids", "reason"],
                                "additionalProperties": False,
                                "properties": {
                                    "ids": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": 100,
                                        "items": {
                                            "type": "string",
                                            "minLength": 1,
                                            "maxLength": 255,
                                        },
                                    },
                                    "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
                                    "by": {"type": "string", "maxLength": 128},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": [
                                "applied",
                                "already_applied",
                                "failed",
                                "not_found",
                                "by",
                                "reason",
                            ],
                            "properties": {
                                "applied": {"type": "array", "items": {"type": "string"}},
                                "already_applied": {"type": "array", "items": {"type": "string"}},
                                "failed": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["message_id", "reason"],
                                        "properties": {
                                            "message_id": {"type": "string"},
                                            "reason": {"type": "string"},
                                        },
                                    },
                                },
                                "not_found": {"type": "array", "items": {"type": "string"}},
                                "by": {"type": "string"},
                                "reason": {"type": "string"},
                            },
                        },
                        "What became of each dead letter",
                    ),
                    "400": _error("Invalid request (no ids, no reason, a field too long ...)"),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _error(_PIPELINE_OFF),
                    "413": _error("The body is too large"),
                    "503": _error("The broker or the new database could not be reached"),
                },
            }
        },
        "/_strangler/anomalies": {
            "get": {
                "summary": "Legacy facts that broke a new-domain invariant: counts and the newest",
                "description": "As `strangler anomalies`.",
                "operationId": "anomalies",
                "security": _ADMIN,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                    },
                    {"name": "kind", "in": "query", "schema": {"type": "string", "maxLength": 64}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["counts", "total", "anomalies"],
                            "properties": {
                                "counts": {
                                    "type": "object",
                                    "additionalProperties": {"type": "integer"},
                                },
                                "total": {"type": "integer"},
                                "anomalies": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "recorded_at",
                                            "kind",
                                            "sku",
                                            "detail",
                                            "message_id",
                                        ],
                                        "properties": {
                                            "recorded_at": _NULLABLE_TIME,
                                            "kind": {"type": "string"},
                                            "sku": {"type": ["string", "null"]},
                                            "detail": {"type": "string"},
                                            "message_id": {"type": ["string", "null"]},
                                        },
                                    },
                                },
                            },
                        },
                        "Anomalies",
                    ),
                    "400": _error("Invalid parameters"),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _error(_PIPELINE_OFF),
                    "503": _error("The new database could not be reached"),
                },
            }
        },
        "/_strangler/status": {
            "get": {
                "summary": "Lag guard, this worker's shadow queue, the cutover gate",
                "operationId": "status",
                "security": _ADMIN,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Status"}, "Status"),
                    **_ADMIN_ERRORS,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        "headers": {
            "ServedBy": {
                "description": "Who answered: legacy, new or facade",
                "schema": {"type": "string", "enum": ["legacy", "new", "facade"]},
            }
        },
        "responses": {
            "Unauthorized": _error("No valid bearer token; nothing was changed"),
            "AdminOff": _error("The admin API is off (no token configured)"),
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            },
            "Allocation": {
                "type": "object",
                "required": ["sku", "batchref"],
                "additionalProperties": False,
                "properties": {"sku": {"type": "string"}, "batchref": {"type": "string"}},
            },
            "Parity": _PARITY,
            "RouteOptions": _OPTIONS,
            "Route": _ROUTE,
            "AuditEntry": _AUDIT,
            "Ownership": _OWNERSHIP,
            "ShadowResult": _RESULT,
            "SetRoute": _SET_REQUEST,
            "GateVerdict": _GATE_VERDICT,
            "Pipeline": _PIPELINE,
            "DeadLetter": _DEAD_LETTER,
            "Status": {
                "type": "object",
                "required": ["lag", "shadow", "gate"],
                "properties": {
                    "lag": {
                        "type": "object",
                        "required": [
                            "enabled",
                            "max_lag_seconds",
                            "lag_seconds",
                            "tripped",
                            "error",
                        ],
                        "properties": {
                            "enabled": {"type": "boolean"},
                            "max_lag_seconds": {"type": ["number", "null"]},
                            "lag_seconds": {"type": ["number", "null"]},
                            "tripped": {"type": "boolean"},
                            "error": {"type": ["string", "null"]},
                        },
                    },
                    "shadow": {
                        "type": "object",
                        "required": [
                            "offered",
                            "dropped",
                            "compared",
                            "written",
                            "write_failures",
                            "queued",
                            "capacity",
                        ],
                        "additionalProperties": {"type": "integer"},
                    },
                    "gate": {
                        "type": "object",
                        "required": [
                            "min_parity",
                            "min_samples",
                            "window_seconds",
                            "window_samples",
                        ],
                        "properties": {
                            "min_parity": {"type": "number"},
                            "min_samples": {"type": "integer"},
                            "window_seconds": {"type": "number"},
                            "window_samples": {"type": "integer"},
                        },
                    },
                },
            },
        },
    },
}


def document() -> dict[str, Any]:
    """A copy of the OpenAPI document."""
    return copy.deepcopy(_DOCUMENT)


def render() -> str:
    """The document as ``docs/openapi.json`` holds it."""
    return json.dumps(_DOCUMENT, indent=2, sort_keys=False) + "\n"
