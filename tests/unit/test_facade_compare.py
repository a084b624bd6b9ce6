"""Comparing two answers, and keeping comparison results to a window."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from skeleton_app import Parity, RouteOptions, ShadowResults, Window
from skeleton_app.compare import MAX_DIFF_CHARS, Answer, compare
from skeleton_app.schema import facade_shadow_result, metadata
from skeleton_app.shadow_results import ShadowResult

JSON = (("Content-Type", "application/json"),)


def answer(
    body: object,
    status: int = 200,
    headers: tuple[tuple[str, str], ...] = JSON,
) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, headers, raw, 0.01)


def test_json_compares_as_data_not_text() -> None:
    legacy = answer(b'{"a": 1, "b": [1, 2]}\n')
    new = answer(b'{"b":[1,2],"a":1}')

    assert compare(legacy, new, RouteOptions()).outcome == "match"


def test_list_order_counts_unless_the_route_says_otherwise() -> None:
    legacy, new = answer([{"sku": "A"}, {"sku": "B"}]), answer([{"sku": "B"}, {"sku": "A"}])

    assert compare(legacy, new, RouteOptions()).outcome == "mismatch"
    assert compare(legacy, new, RouteOptions(unordered_lists=True)).outcome == "match"
    repeated = answer([{"sku": "A"}, {"sku": "A"}, {"sku": "B"}])
    assert compare(legacy, repeated, RouteOptions(unordered_lists=True)).outcome == "mismatch"


def test_ignored_fields_are_dropped_at_any_depth() -> None:
    legacy = answer({"at": 1, "items": [{"sku": "A", "at": 2}]})
    new = answer({"at": 9, "items": [{"sku": "A", "at": 8}]})

    assert compare(legacy, new, RouteOptions()).outcome == "mismatch"
    assert compare(legacy, new, RouteOptions(ignore_fields=("at",))).outcome == "match"


def test_status_and_media_type_count() -> None:
    result = compare(
        answer({"x": 1}), answer({"x": 1}, 201, (("Content-Type", "text/plain"),)), RouteOptions()
    )

    assert result.outcome == "mismatch"
    assert (
        result.diff == "status: legacy 200, new 201\ncontent type: legacy application/json, "
        "new text/plain"
    )


def test_compressed_bodies_are_decoded_before_comparing() -> None:
    body = json.dumps([{"sku": "A"}]).encode()
    zipped = answer(gzip.compress(body), headers=(*JSON, ("Content-Encoding", "gzip")))

    assert compare(zipped, answer(body), RouteOptions()).outcome == "match"
    odd = answer(b"...", headers=(*JSON, ("Content-Encoding", "br")))
    result = compare(odd, answer(body), RouteOptions())
    assert result.outcome == "mismatch"
    assert result.diff == "body: cannot compare br-encoded bodies"


def test_other_bodies_compare_byte_for_byte_with_the_first_difference_shown() -> None:
    text = (("Content-Type", "text/plain"),)
    result = compare(
        answer(b"hello world", headers=text), answer(b"hello there", headers=text), RouteOptions()
    )

    assert result.diff == (
        "body: 11 bytes from legacy, 11 from new, first difference at byte 6: "
        "legacy b'hello world', new b'hello there'"
    )


def test_long_diffs_are_clipped() -> None:
    legacy = answer([{"n": n} for n in range(500)])
    new = answer([{"n": -n} for n in range(500)])

    diff = compare(legacy, new, RouteOptions()).diff

    assert diff is not None
    assert len(diff) < MAX_DIFF_CHARS + 100
    assert diff.endswith("more characters)")


@pytest.fixture
def results(tmp_path: Path) -> ShadowResults:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    metadata.create_all(engine)
    return ShadowResults(engine, Window(seconds=600, max_samples=3))


def _rows(outcome: str, count: int, at: datetime, pattern: str = "/a") -> list[ShadowResult]:
    return [
        ShadowResult(
            at=at,
            method="GET",
            pattern=pattern,
            kind="shadow",
            outcome=outcome,
            path="/a",
            legacy_status=200,
            legacy_ms=1.0,
        )
        for _ in range(count)
    ]


def test_parity_counts_the_window_and_pruning_keeps_it(results: ShadowResults) -> None:
    now = datetime.now(UTC)
    results.write(_rows("mismatch", 2, now - timedelta(minutes=20)))
    results.write(_rows("error", 1, now - timedelta(minutes=2)))
    results.write(_rows("match", 2, now))
    results.write(_rows("mismatch", 1, now, pattern="/b"))

    assert results.parity("GET", "/a", now=now) == Parity(matches=2, errors=1)
    assert results.parity("GET", "/a", now=now).describe() == "66.66% over 3 samples"
    assert results.parity("GET", "/c", now=now) == Parity()

    results.write(_rows("match", 1, now))  # the error falls out of the newest three
    assert results.parity("GET", "/a", now=now) == Parity(matches=3)
    assert results.prune(now) == 3
    engine = results._engine
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(facade_shadow_result)).scalar() == 4
