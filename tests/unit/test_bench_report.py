"""The benchmarks' arithmetic: targets, ratios, percentiles, load tool output."""

from __future__ import annotations

import pytest

from bench.http_load import LoadFailed, parse_output
from bench.report import Figure, Result, Target, render
from bench.stats import percentile


def test_ratio_target_compares_the_figure_with_its_baseline() -> None:
    figure = Figure("rate", 4000, "changes/s", 16000, "raw", Target("ratio", ">=", 0.5))
    assert figure.ratio == 0.25
    assert figure.met is False
    assert Figure("rate", 9000, "changes/s", 16000, "raw", Target("ratio", ">=", 0.5)).met


def test_added_target_is_the_difference_from_the_baseline() -> None:
    assert Figure("p50", 2.9, "ms", 2.0, "direct", Target("added", "<=", 1.0)).met is True
    assert Figure("p50", 3.1, "ms", 2.0, "direct", Target("added", "<=", 1.0)).met is False


def test_value_target_ignores_the_baseline_and_no_target_is_neither_met_nor_missed() -> None:
    assert Figure("p99", 120, "ms", 2, "raw", Target("value", "<=", 100)).met is False
    assert Figure("rss", 90, "MB", None, "", Target("value", "<=", 150)).met is True
    assert Figure("p50", 50, "ms", 1, "raw").met is None


def test_render_shows_one_row_per_figure_and_a_clear_not_available_line() -> None:
    result = Result("pipeline_throughput", 100, "title")
    result.figures = [
        Figure("end-to-end rate", 4000, "changes/s", 16000, "raw pika", Target("ratio", ">=", 0.5))
    ]
    text = render(result)
    assert "end-to-end rate" in text
    assert "16,000 changes/s (raw pika)" in text
    assert "0.25" in text and "NO" in text
    missing = Result(
        "snapshot", 10, "t", "not available", "not available: strangler bridge snapshot missing"
    )
    assert render(missing).endswith("\nnot available: strangler bridge snapshot missing")


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([0, 10], 90) == 9
    assert percentile([5], 99) == 5
    with pytest.raises(ValueError):
        percentile([], 50)


def test_load_output_is_read_from_its_marker_line() -> None:
    stdout = (
        "Running 1s test\n"
        'LOAD_JSON {"requests": 500, "duration_us": 2000000, "errors": 0, "non2xx": 1, '
        '"p50_us": 1500.0, "p90_us": 2000.0, "p99_us": 4000.0, "mean_us": 1600.0, '
        '"max_us": 9000.0}\n'
    )
    result = parse_output(stdout)
    assert result.rate == 250
    assert result.p50_ms == 1.5 and result.p99_ms == 4.0
    assert result.non2xx == 1
    with pytest.raises(LoadFailed):
        parse_output("Running 1s test\n")
