"""The OpenAPI 3.1 document of the facade's own endpoints (and the read route it serves).

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
            "description": "legacy, aa, shadow, canary (with percent, or 'canary N') or new",
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

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Strangler facade",
        "version": "0.2.0",
        "description": (
            "The facade's own endpoints under /_strangler/ and the read route it can serve "
            "from the new system. Every other path is proxied to the legacy system unchanged. "
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
        "/_strangler/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            }
        },
        "/_strangler/routes": {
            "get": {
                "summary": "Every route, its mode, options, shadow parity and A/A noise, and "
                "the write routes' decision parity",
                "operationId": "listRoutes",
                "security": _ADMIN,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["routes", "decision_parity"],
                            "properties": {
                                "routes": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Route"},
                                },
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
                "description": "A move to new passes the cutover gate first (shadow parity "
                "over the window), unless force is true; the audit says so.",
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
                            "required": ["route", "audit"],
                            "properties": {
                                "route": {"$ref": "#/components/schemas/Route"},
                                "audit": {"$ref": "#/components/schemas/AuditEntry"},
                            },
                        },
                        "The route as set and its audit entry",
                    ),
                    "400": _error(
                        "Invalid change (unknown mode, route, option, a field "
                        "too long or with control characters ...)"
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
                        "The cutover gate refused the move to new",
                    ),
                    **_ADMIN_ERRORS,
                },
            },
            "delete": {
                "summary": "Delete a stored route (audited)",
                "description": "Its paths are then served like any other (from legacy). "
                "A route whose pattern is no longer accepted can be deleted.",
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
                    **_ADMIN_ERRORS,
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
                    **_ADMIN_ERRORS,
                },
            }
        },
        "/_strangler/routes/rollback": {
            "post": {
                "summary": "Serve one route, or every route not on legacy, from legacy",
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
                    **_ADMIN_ERRORS,
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
            "ShadowResult": _RESULT,
            "SetRoute": _SET_REQUEST,
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
