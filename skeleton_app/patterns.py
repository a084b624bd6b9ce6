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
from werkzeug.routing.converters import (
    AnyConverter,
    BaseConverter,
    NumberConverter,
    PathConverter,
    UnicodeConverter,
    UUIDConverter,
)
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
class Candidate:
    """One step of the matcher's search (see :meth:`PatternMatcher.search_order`).

    ``methods``: the request methods it accepts; ``path_regex``: an anchored regular
    expression of the paths it matches; ``key``: the route matched (None: the matcher
    answers no route: a path one slash short of a route's, which werkzeug redirects);
    ``exact``: False when the matcher may still refuse a path the regex matches (a
    converter that checks values, such as ``int(max=9)``): then it answers no route."""

    methods: frozenset[str]
    path_regex: str
    key: RouteKey | None
    exact: bool = True


SAFE_PATH_CHARACTERS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/:@!$&'()*+,;=-._~"
)
"""The characters of a path a proxy may route by :meth:`PatternMatcher.search_order`
(RFC 3986's path characters without ``%`` escapes; the facade's proxy forwards them as
they are)."""

_LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/:@!&',;=-_~")


def _literal(text: str) -> str | None:
    """``text`` as a regex matching only itself; None when a safe path cannot hold it."""
    out = []
    for char in text:
        if char not in SAFE_PATH_CHARACTERS:
            return None
        out.append(char if char in _LITERAL else f"[{char}]")
    return "".join(out)


def _converter_regex(converter: BaseConverter) -> str | None:
    """The regex of a converter's values in a safe path (a wider one for a converter
    this code does not know); None: it matches none."""
    if isinstance(converter, PathConverter):
        return "[^/].*"
    if isinstance(converter, UUIDConverter | UnicodeConverter):
        return converter.regex  # character classes and counts, no backslash
    if isinstance(converter, NumberConverter):
        regex = converter.regex.replace(r"\d", "[0-9]").replace(r"\.", "[.]")
        return regex if "\\" not in regex else "[^/]+"
    if isinstance(converter, AnyConverter):
        kept = [item for item in map(_literal, sorted(converter.items)) if item]
        return f"(?:{'|'.join(kept)})" if kept else None
    return "[^/]+" if converter.part_isolating else ".+"


def _takes_every_match(converter: BaseConverter) -> bool:
    """Whether ``converter`` accepts every value its regex matches (exactly that regex)."""
    if isinstance(converter, NumberConverter):
        checks = converter.fixed_digits or converter.min is not None or converter.max is not None
        return not checks and "\\" not in converter.regex.replace(r"\d", "").replace(r"\.", "")
    return isinstance(converter, PathConverter | UUIDConverter | UnicodeConverter | AnyConverter)


_GROUP = re.compile(r"\(\?P<__werkzeug_\d+>")
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def _part_regex(content: str, converters: list[BaseConverter]) -> str | None:
    """A dynamic part's werkzeug regex (``re.escape``d text and ``(?P<__werkzeug_N>...)``
    groups of ``converters``' regexes, ending in ``\\Z``) in the form of ``_literal``."""
    if content.endswith(r"\Z"):
        content = content[:-2]
    regex, position = [], 0
    for converter in converters:
        opened = _GROUP.search(content, position)
        if opened is None:
            raise LookupError(f"unknown werkzeug part {content!r}")
        group = f"{converter.regex})"
        if not content.startswith(group, opened.end()):
            raise LookupError(f"unknown werkzeug part {content!r}")
        text = _literal(_ESCAPED.sub(r"\1", content[position : opened.start()]))
        translated = _converter_regex(converter)
        if text is None or translated is None:
            return None
        regex.append(text + translated)
        position = opened.end() + len(group)
    text = _literal(_ESCAPED.sub(r"\1", content[position:]))
    if text is None:
        return None
    return "".join(regex) + text


def _walk(state: Any, pieces: list[str], found: list[Candidate]) -> None:
    """Append the candidates of ``state`` and below, in werkzeug's search order: the
    rules of the state itself (when the path ends here), the trailing-slash redirects,
    then the static transitions, then the dynamic ones by weight."""
    regex = "^" + "/".join(pieces) + "$"
    for rule in state.rules:
        if rule.strict_slashes is False:
            raise LookupError("unknown werkzeug matcher: a rule without strict slashes")
        found.append(
            Candidate(frozenset(rule.methods or ()), regex, rule.endpoint, _checks_nothing(rule))
        )
    slashed = state.static.get("")
    if slashed is not None:
        for rule in slashed.rules:  # "/a" where "/a/" is a route: a redirect, no route
            found.append(Candidate(frozenset(rule.methods or ()), regex, None, True))
    for text, child in state.static.items():
        literal = _literal(text)
        if literal is not None:
            _walk(child, [*pieces, literal], found)
    for part, child in state.dynamic:
        if part.suffixed:
            raise LookupError("unknown werkzeug matcher: a suffixed part")
        rule = _a_rule_below(child)  # every rule below passes through this part
        index = len(pieces) + 1  # part 0 is the domain
        if rule._parts[index] != part:
            raise LookupError("unknown werkzeug matcher: parts out of place")
        translated = _part_regex(part.content, _converters_of(rule, index))
        if translated is not None:
            _walk(child, [*pieces, translated], found)


def _checks_nothing(rule: Rule) -> bool:
    """No converter of ``rule`` may refuse a value its regex matched."""
    return all(map(_takes_every_match, rule._converters.values()))


def _a_rule_below(state: Any) -> Rule:
    if state.rules:
        return state.rules[0]  # type: ignore[no-any-return]
    for child in (*state.static.values(), *(child for _, child in state.dynamic)):
        return _a_rule_below(child)
    raise LookupError("unknown werkzeug matcher: a state without rules")


def _converters_of(rule: Rule, index: int) -> list[BaseConverter]:
    """The converters of ``rule``'s part ``index``, in order."""
    converters = list(rule._converters.values())
    before = sum(len(_GROUP.findall(part.content)) for part in rule._parts[:index])
    count = len(_GROUP.findall(rule._parts[index].content))
    return converters[before : before + count]


@dataclass(frozen=True)
class PatternMatch:
    method: str
    pattern: str
    args: Mapping[str, Any]


class PatternMatcher:
    """Finds the pattern a request matches, preferring the most specific one (Flask's order).

    Where two routes of one pattern both accept a method (a ``HEAD`` route and the ``GET``
    route, which accepts ``HEAD`` too), the ``HEAD`` route wins, then the methods in
    alphabetical order: the same in every process, whatever order the routes were read in.
    """

    def __init__(self, keys: Iterable[RouteKey]) -> None:
        ordered = sorted(set(keys), key=lambda key: (key[1], key[0] != "HEAD", key[0]))
        rules = [
            Rule(pattern, methods=[method], endpoint=(method, pattern))
            for method, pattern in ordered
        ]
        self._map = Map(rules, merge_slashes=False)
        self._map.update()

    def search_order(self) -> list[Candidate]:
        """The routes as an ordered list of (methods, path regex): the first candidate
        whose methods hold a request's method and whose regex matches its path is the one
        :meth:`match` answers (a candidate without a key: :meth:`match` answers None).

        Meant for a proxy deciding before the facade does (see
        :mod:`skeleton_app.dataplane.routing`), so it covers the paths such a proxy
        hands to this decision only: made of ``SAFE_PATH_CHARACTERS`` (no ``%`` escape,
        nothing beyond ASCII), not starting with ``//`` (werkzeug drops leading slashes
        before matching); a route whose fixed text holds anything else matches none
        of them and is left out. The regexes are ASCII, without backslashes or spaces,
        and mean the same to Python's ``re`` and to PCRE. It walks the matcher werkzeug
        builds, in the order werkzeug searches it; raises ``LookupError`` when that
        matcher is not the one this code knows (another werkzeug)."""
        try:
            root = self._map._matcher._root
            domain = root.static[""]
        except (AttributeError, KeyError) as exc:
            raise LookupError(f"unknown werkzeug matcher: {exc!r}") from exc
        if root.rules or root.dynamic or len(root.static) != 1:
            raise LookupError("unknown werkzeug matcher: routes outside the domain part")
        found: list[Candidate] = []
        _walk(domain, [], found)
        return found

    def match(self, method: str, path: str) -> PatternMatch | None:
        adapter = self._map.bind("facade.invalid", "/")
        try:
            rule, args = adapter.match(path, method=method.upper(), return_rule=True)
        except (HTTPException, RoutingException):
            return None
        route_method, pattern = rule.endpoint
        return PatternMatch(route_method, pattern, dict(args))
