"""HTTP errors as the kit writes them: JSON ``{"error": ..., "detail": ...}``."""

from __future__ import annotations

import re

from flask import Response, jsonify

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")


def json_error(status: int, error: str, detail: str) -> Response:
    response = jsonify({"error": error, "detail": detail})
    response.status_code = status
    return response


def printable(text: str, limit: int = 300) -> str:
    """``text`` safe to write on one line of a log or a terminal: control characters (CR,
    LF, escape codes, NUL), line separators and backslashes escaped, cut at ``limit``."""
    escaped = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."
