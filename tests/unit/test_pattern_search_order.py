"""The matcher's search order, as a proxy replays it: for any routes and any safe path,
the first candidate whose methods and regex match is the route the matcher answers."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from skeleton_app.patterns import (
    SAFE_PATH_CHARACTERS,
    Candidate,
    PatternMatcher,
    RouteKey,
    validate_pattern,
)

PATTERNS = [
    "/",
    "/a",
    "/a/",
    "/a/b",
    "/a/<x>",
    "/a/<x>/b",
    "/a/<int:n>",
    "/a/<int(max=5):n>",
    "/a/<int(signed=True):n>",
    "/a/<float:f>",
    "/a/x<y>.json",
    "/a/<string(length=2):s>",
    "/a/<any(b, 'c.d', \"e f\"):v>",
    "/a/<uuid:u>",
    "/a/<path:p>",
    "/<x>/b",
    "/<path:p>",
    "/b/<path:p>",
    "/b/c.d",
    "/b/(x)",
    "/b/$*+",
    "/b/caf\u00e9",
    "/b/with space",
    "/allocations/<orderid>",
    "/allocations/<orderid>/lines",
]
METHODS = ["GET", "HEAD", "POST", "PUT"]
SEGMENTS = [
    "a",
    "b",
    "c.d",
    "e",
    "x1.json",
    "xy.json",
    "3",
    "7",
    "-4",
    "1.5",
    "12",
    "allocations",
    "o-1",
    "lines",
    "(x)",
    "$*+",
    "12345678-1234-1234-1234-123456789abc",
    "",
    "'",
]

routes = st.lists(
    st.tuples(st.sampled_from(METHODS), st.sampled_from(PATTERNS)), min_size=1, max_size=8
)
paths = (
    st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=4)
    .map(lambda parts: "/" + "/".join(parts))
    .filter(lambda path: not path.startswith("//"))  # werkzeug drops leading slashes
)


def first(candidates: list[Candidate], method: str, path: str) -> Candidate | None:
    for candidate in candidates:
        if method in candidate.methods and re.fullmatch(candidate.path_regex, path):
            return candidate
    return None


def test_the_patterns_are_valid_routes() -> None:
    for pattern in PATTERNS:
        validate_pattern(pattern)


@settings(max_examples=300, deadline=None)
@given(routes, st.lists(st.tuples(st.sampled_from(METHODS), paths), min_size=1, max_size=20))
def test_the_first_candidate_is_what_the_matcher_answers(
    keys: list[RouteKey], requests: list[tuple[str, str]]
) -> None:
    matcher = PatternMatcher(keys)
    candidates = matcher.search_order()
    for method, path in requests:
        assert set(path) <= SAFE_PATH_CHARACTERS
        found = matcher.match(method, path)
        answered = None if found is None else (found.method, found.pattern)
        candidate = first(candidates, method, path)
        if candidate is None:
            assert answered is None, (method, path)
        elif candidate.exact:
            assert candidate.key == answered, (method, path, candidate)
        else:  # a converter that checks values: that route, or none when it refuses
            assert answered in (candidate.key, None), (method, path, candidate)


def test_the_regexes_hold_nothing_a_map_line_or_the_runtime_api_would_split() -> None:
    candidates = PatternMatcher([("GET", p) for p in PATTERNS]).search_order()
    for candidate in candidates:
        assert re.fullmatch(r"[\x21-\x7e]*", candidate.path_regex), candidate
        assert "\\" not in candidate.path_regex


def test_a_route_no_safe_path_can_reach_is_left_out() -> None:
    candidates = PatternMatcher(
        [("GET", "/b/caf\u00e9"), ("GET", "/b/with space"), ("GET", "/b/c.d")]
    ).search_order()
    assert [c.key for c in candidates] == [("GET", "/b/c.d")]


def test_head_routes_win_over_the_get_route_of_the_same_pattern_in_any_order() -> None:
    for keys in ([("GET", "/a"), ("HEAD", "/a")], [("HEAD", "/a"), ("GET", "/a")]):
        found = PatternMatcher(keys).match("HEAD", "/a")
        assert found is not None and found.method == "HEAD"
