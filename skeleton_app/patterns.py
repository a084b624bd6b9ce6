"""Route patterns: ``METHOD /flask/style/<pattern>``, validated and matched like Flask does.

A ``GET`` pattern also matches ``HEAD`` requests, as in Flask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.routing.exceptions import RoutingException

RESERVED_PREFIX = "/_strangler/"
"""Paths under this prefix belong to the facade itself and are never routed."""


def is_reserved(path: str) -> bool:
    return path.startswith(RESERVED_PREFIX) or path == RESERVED_PREFIX.rstrip("/")

_METHOD = re.compile(r"[A-Z]{1,16}")

RouteKey = tuple[str, str]
"""``(METHOD, pattern)``, e.g. ``("GET", "/allocations/<orderid>")``."""


class RouteError(ValueError):
    """A route or a mode that cannot be used; the message is one line for the user."""


def normalise_method(method: str) -> str:
    upper = method.strip().upper()
    if not _METHOD.fullmatch(upper):
        raise RouteError(f"invalid HTTP method {method!r}")
    return upper


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid Flask-style path pattern, else raise RouteError."""
    if not pattern.startswith("/"):
        raise RouteError(f"invalid route pattern {pattern!r}: it must start with '/'")
    if is_reserved(pattern):
        raise RouteError(f"invalid route pattern {pattern!r}: {RESERVED_PREFIX} is the facade's")
    if len(pattern) > 255:
        raise RouteError(f"invalid route pattern {pattern[:40]!r}...: longer than 255 characters")
    try:
        Map([Rule(pattern, endpoint=pattern)])
    except (ValueError, LookupError) as exc:
        raise RouteError(f"invalid route pattern {pattern!r}: {exc}") from exc
    return pattern


@dataclass(frozen=True)
class PatternMatch:
    method: str
    pattern: str
    args: Mapping[str, Any]


class PatternMatcher:
    """Finds the pattern a request matches, preferring the most specific one (Flask's order)."""

    def __init__(self, keys: Iterable[RouteKey]) -> None:
        rules = [
            Rule(pattern, methods=[method], endpoint=(method, pattern)) for method, pattern in keys
        ]
        self._map = Map(rules, merge_slashes=False)
        self._map.update()

    def match(self, method: str, path: str) -> PatternMatch | None:
        adapter = self._map.bind("facade.invalid", "/")
        try:
            rule, args = adapter.match(path, method=method.upper(), return_rule=True)
        except (HTTPException, RoutingException):
            return None
        route_method, pattern = rule.endpoint
        return PatternMatch(route_method, pattern, dict(args))
