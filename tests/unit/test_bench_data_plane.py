"""The data plane benchmark's own logic: the holder's bytes and answers, its counts, the
phase order, rounds merged, the CPU split by command, HAProxy's count of connections."""

from __future__ import annotations

import h11
import pytest

from bench.facade_overhead import current_connections, held_summary, marker_line
from bench.holder import DONE, READY, Counts, answer_status, slow_bytes
from bench.http_load import LoadResult
from bench.processes import BenchmarkFailed, parse_stat
from bench.servers import Measured, merge_measured, phase_order


def test_a_slow_connection_sends_one_byte_at_a_time_and_never_ends_its_headers() -> None:
    sent = list(slow_bytes("/batches/LOT-00000001", "127.0.0.1:8080"))
    assert all(len(byte) == 1 for byte in sent)
    data = b"".join(sent)
    assert data.startswith(b"GET /batches/LOT-00000001 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert b"\r\n\r\n" not in data  # the request never ends
    assert len(data) > 4000  # longer than any request timeout at one byte a second


def test_an_answer_is_complete_only_once_its_whole_body_arrived() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert answer_status([head[:10]]) == (0, False)
    assert answer_status([head, b"ab"]) == (200, False)
    assert answer_status([head, b"ab", b"cde"]) == (200, True)
    timeout = b"HTTP/1.1 408 Request Time-out\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    assert answer_status([timeout]) == (408, True)
    with pytest.raises(h11.RemoteProtocolError):
        answer_status([b"not http at all\r\n\r\n"])


def test_counts_keep_the_fewest_connections_held_since_ready() -> None:
    counts = Counts(idle_open=1000, slow_open=50)
    assert counts.as_dict()["idle_min"] == -1  # not sampled before ready
    counts.sample()
    counts.slow_open = 49  # one cut off, not yet reopened
    counts.sample()
    counts.slow_open = 50
    counts.slow_answers[408] += 1
    counts.sample()
    summary = counts.as_dict()
    assert (summary["idle_min"], summary["slow_min"], summary["held_max"]) == (1000, 49, 1050)
    assert summary["slow_answers"] == {"408": 1}


def test_the_holder_report_is_the_last_marker_line() -> None:
    log = f'noise\n{READY}{{"idle_open": 3}}\n{DONE}{{"idle_min": 2}}\n{DONE}{{"idle_min": 3}}\n'
    assert marker_line(log, READY) == {"idle_open": 3}
    assert marker_line(log, DONE) == {"idle_min": 3}
    assert marker_line("nothing", DONE) is None


def test_phases_alternate_so_no_side_always_goes_first() -> None:
    assert phase_order(["a", "b"], 2) == ["a", "b", "b", "a"]
    assert phase_order(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert phase_order(["a", "b"], 1) == ["a", "b"]


def test_a_stat_line_gives_command_group_and_cpu_ticks_even_with_odd_names() -> None:
    line = "4242 (gunicorn: worker (x)) S 4200 4100 4100 0 -1 0 10 0 0 0 " + "17 5 0 0 20 0"
    stat = parse_stat(line)
    assert (stat.command, stat.pgrp, stat.cpu_ticks) == ("gunicorn: worker (x)", 4100, 22)
    assert parse_stat("7 (haproxy) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0").command == "haproxy"


EXPOSITION = """# HELP haproxy_frontend_current_sessions Number of current sessions.
# TYPE haproxy_frontend_current_sessions gauge
haproxy_frontend_current_sessions{proxy="metrics"} 1
haproxy_frontend_current_sessions{proxy="public"} 1051
# TYPE strangler_requests_total counter
strangler_requests_total 3
"""


def test_haproxy_connections_are_read_for_the_public_frontend() -> None:
    assert current_connections(EXPOSITION) == 1051
    assert current_connections(EXPOSITION, proxy="metrics") == 1
    with pytest.raises(BenchmarkFailed, match="no haproxy_frontend_current_sessions"):
        current_connections("strangler_requests_total 3\n")


def _measured(requests: int, p50: float, cpu: dict[str, float]) -> Measured:
    load = LoadResult(requests, 10.0, 0, 0, p50, p50, p50, p50, p50)
    return Measured(load, cpu)


def test_rounds_measured_apart_merge_weighted_by_their_requests() -> None:
    merged = merge_measured(
        [_measured(100, 2.0, {"legacy": 1.0}), _measured(300, 4.0, {"legacy": 2.0, "holder": 1})]
    )
    assert merged.load.requests == 400
    assert merged.load.duration_s == 20.0
    assert merged.load.p50_ms == pytest.approx(3.5)
    assert merged.cpu_ms_per_request == pytest.approx({"legacy": 1.75, "holder": 0.75})


def test_the_held_summary_keeps_the_worst_round_and_sums_the_rest() -> None:
    def round_(idle_min: int, before: int, after: int, cut: int) -> dict[str, object]:
        return {
            "idle_min": idle_min, "slow_min": 50, "connections_before": before,
            "connections_after": after, "haproxy_rss_mb_held": 18.0 + cut,
            "slow_answers": {"408": cut}, "idle_reopened": 0, "slow_reopened": cut,
            "slow_bytes_sent": 500,
        }  # fmt: skip

    summary = held_summary([round_(1000, 1051, 1051, 50), round_(998, 1051, 1049, 0)])
    assert (summary["idle_min"], summary["connections_min"]) == (998, 1049)
    assert summary["slow_answers"] == {"408": 50}
    assert (summary["slow_reopened"], summary["slow_bytes_sent"]) == (50, 1000)
    assert summary["haproxy_rss_mb_held"] == 68.0
    assert len(summary["rounds"]) == 2
