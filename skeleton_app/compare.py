"""Comparing two answers to the same request: status, media type, and the body, JSON-aware.

JSON bodies are compared as data with deepdiff (so key order and whitespace never count),
after dropping the route's ignored fields wherever they occur; with ``unordered_lists``,
lists compare as multisets. Other bodies compare byte for byte. A mismatch comes with a
readable diff, legacy on the left.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from deepdiff import DeepDiff

from skeleton_app.route_options import RouteOptions
from skeleton_app.shadow_results import MATCH, MISMATCH

MAX_DIFF_CHARS = 4000


@dataclass(frozen=True)
class Answer:
    """A whole HTTP answer; ``elapsed`` in seconds (request sent to body received)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)
    elapsed: float = 0.0

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    @property
    def media_type(self) -> str:
        return (self.header("Content-Type") or "").split(";")[0].strip().lower()


@dataclass(frozen=True)
class Comparison:
    outcome: str
    diff: str | None = None


class UndecodableBody(ValueError):
    """A Content-Encoding the comparison cannot undo."""


def compare(legacy: Answer, candidate: Answer, options: RouteOptions) -> Comparison:
    """``match`` or ``mismatch`` (with a diff) of ``candidate`` against ``legacy``."""
    problems: list[str] = []
    if legacy.status != candidate.status:
        problems.append(f"status: legacy {legacy.status}, new {candidate.status}")
    if legacy.media_type != candidate.media_type:
        problems.append(
            f"content type: legacy {legacy.media_type or '-'}, new {candidate.media_type or '-'}"
        )
    try:
        legacy_body, candidate_body = _decoded(legacy), _decoded(candidate)
    except UndecodableBody as exc:
        problems.append(str(exc))
        return Comparison(MISMATCH, _clip("\n".join(problems)))
    legacy_json, candidate_json = _json(legacy_body), _json(candidate_body)
    if legacy_json is not _NOT_JSON and candidate_json is not _NOT_JSON:
        problems.extend(_json_diff(legacy_json, candidate_json, options))
    elif legacy_body != candidate_body:
        problems.append(_bytes_diff(legacy_body, candidate_body))
    if not problems:
        return Comparison(MATCH)
    return Comparison(MISMATCH, _clip("\n".join(problems)))


_NOT_JSON: Any = object()


def _json(body: bytes) -> Any:
    if not body.strip():
        return _NOT_JSON
    try:
        return json.loads(body)
    except ValueError:
        return _NOT_JSON


def _decoded(answer: Answer) -> bytes:
    encoding = (answer.header("Content-Encoding") or "identity").strip().lower()
    if encoding in ("", "identity"):
        return answer.body
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(answer.body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(answer.body)
            except zlib.error:
                return zlib.decompress(answer.body, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise UndecodableBody(f"body: cannot decode {encoding}: {exc}") from None
    raise UndecodableBody(f"body: cannot compare {encoding}-encoded bodies")


def _without(value: Any, ignored: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list):
        return [_without(v, ignored) for v in value]
    return value


def _json_diff(legacy: Any, candidate: Any, options: RouteOptions) -> list[str]:
    ignored = frozenset(options.ignore_fields)
    if ignored:
        legacy, candidate = _without(legacy, ignored), _without(candidate, ignored)
    diff = DeepDiff(
        legacy,
        candidate,
        ignore_order=options.unordered_lists,
        report_repetition=options.unordered_lists,
        verbose_level=2,
    )
    if not diff:
        return []
    return ["body (legacy -> new):", *("  " + line for line in diff.pretty().splitlines())]


def _bytes_diff(legacy: bytes, candidate: bytes) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(legacy, candidate, strict=False)) if a != b),
        min(len(legacy), len(candidate)),
    )
    start = max(0, at - 20)
    return (
        f"body: {len(legacy)} bytes from legacy, {len(candidate)} from new, first difference "
        f"at byte {at}: legacy {legacy[start : at + 40]!r}, new {candidate[start : at + 40]!r}"
    )


def _clip(text: str) -> str:
    if len(text) <= MAX_DIFF_CHARS:
        return text
    return text[:MAX_DIFF_CHARS] + f"\n... ({len(text) - MAX_DIFF_CHARS} more characters)"
