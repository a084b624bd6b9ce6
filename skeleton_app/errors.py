"""HTTP errors as the kit writes them: JSON ``{"error": ..., "detail": ...}``."""

from __future__ import annotations

from flask import Response, jsonify


def json_error(status: int, error: str, detail: str) -> Response:
    response = jsonify({"error": error, "detail": detail})
    response.status_code = status
    return response
