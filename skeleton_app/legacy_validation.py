"""Request bodies of the write routes, checked exactly as the legacy shop checks them.

A write the new system answers must be refused with legacy's status and JSON, word for
word (``examples/legacy_shop/validation.py`` and ``app.py``): the same 413 over 1 MiB, the
same 400 ``{"error": "bad request", "detail": ...}`` for a body that is not a JSON object
or a field that is missing, of the wrong type, blank, too long, out of range or holding
control characters, checked in legacy's order. Every problem is a :class:`LegacyRefusal`
carrying that answer.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
MAX_TEXT_LENGTH = 64
MAX_QTY = 2**31 - 1
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LegacyRefusal(Exception):
    """A request legacy refuses: ``status`` and the JSON ``body`` it answers."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.body: dict[str, Any] = {"error": error, "detail": detail, **extra}


def invalid(detail: str) -> LegacyRefusal:
    return LegacyRefusal(400, "bad request", detail)


def too_large() -> LegacyRefusal:
    return LegacyRefusal(
        413, "request entity too large", f"request body is larger than {MAX_BODY_BYTES} bytes"
    )


def json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    if len(raw) > MAX_BODY_BYTES:
        raise too_large()
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"body is not valid JSON: {_one_line(exc)}") from None
    if not isinstance(value, dict):
        raise invalid(f"body must be a JSON object, got {_json_type(value)}")
    return value


def text(body: dict[str, Any], field: str) -> str:
    """A required non-blank string of at most 64 characters."""
    value = _required(body, field)
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise invalid(f"{field} must not be empty")
    if len(value) > MAX_TEXT_LENGTH:
        raise invalid(f"{field} must be at most {MAX_TEXT_LENGTH} characters")
    if _CONTROL.search(value):
        raise invalid(f"{field} must not contain control characters")
    return value


def quantity(body: dict[str, Any], field: str = "qty", *, minimum: int = 1) -> int:
    """A required integer (booleans are not integers) in ``minimum .. 2**31-1``."""
    value = _required(body, field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{field} must be an integer, got {_json_type(value)}")
    if value < minimum:
        raise invalid(f"{field} must be at least {minimum}, got {value}")
    if value > MAX_QTY:
        raise invalid(f"{field} must be at most {MAX_QTY}, got {value}")
    return value


def optional_date(body: dict[str, Any], field: str) -> date | None:
    """A required key holding null or an ISO date ``YYYY-MM-DD``."""
    value = _required(body, field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{field} must be null or a YYYY-MM-DD string, got {_json_type(value)}")
    if not _ISO_DATE.fullmatch(value):
        raise invalid(f"{field} must be an ISO date YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise invalid(f"{field} is not a valid date: {value!r}") from None


def _required(body: dict[str, Any], field: str) -> Any:
    if field not in body:
        raise invalid(f"missing field: {field}")
    return body[field]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
