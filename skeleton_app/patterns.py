"""Route patterns: ``METHOD /flask/style/<pattern>``, validated and matched like Flask does.

A ``GET`` pattern also matches ``HEAD`` requests, as in Flask.

Every pattern matches in time linear in the path's length: a segment holds at most one
variable, and a ``<path:...>`` variable (which spans segments) only the last segment.
Several variables in one segment, or several spanning variables, make the regular
expressions the matcher builds backtrack polynomially (a 100-segment path against
``/<path:a>/<path:b>/<path:c>`` kept a worker busy for 22 s), so such patterns are
refused, and a stored one is skipped (served from legacy).
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
    if has_control_characters(pattern):
        raise RouteError(f"invalid route pattern {pattern!r}: it holds control characters")
    try:
        Map([Rule(pattern, endpoint=pattern)])
    except (ValueError, LookupError) as exc:
        raise RouteError(f"invalid route pattern {pattern!r}: {exc}") from exc
    segments = pattern.split("/")
    for position, segment in enumerate(segments):
        variables = _VARIABLE.findall(segment)
        if len(variables) > 1:
            raise RouteError(
                f"invalid route pattern {pattern!r}: at most one variable per segment "
                f"(so that matching takes linear time), got {segment!r}"
            )
        if variables and variables[0] == "path" and position != len(segments) - 1:
            raise RouteError(
                f"invalid route pattern {pattern!r}: a <path:...> variable may only be "
                "the last segment (so that matching takes linear time)"
            )
    return pattern


_VARIABLE = re.compile(r"<(?:([a-zA-Z_][a-zA-Z0-9_]*)(?:\([^)]*\))?:)?[a-zA-Z_][a-zA-Z0-9_]*>")
"""A variable in a pattern; the group is its converter's name (empty: the default)."""


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds C0/C1 control characters (NUL, CR, LF, ESC ...) or DEL."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


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
