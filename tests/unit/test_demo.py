"""`strangler demo` runs the whole pipeline in one process and both systems agree."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from skeleton_app.composition.demo import run_demo


def test_demo_new_system_answers_like_legacy(tmp_path: Path) -> None:
    lines: list[str] = []
    assert run_demo(tmp_path, echo=lines.append) is True
    rows = [line for line in lines if line.startswith("order-")]
    assert len(rows) == 5
    assert all(row.rstrip().endswith("new") for row in rows)
    assert not any("differs" in row for row in rows)
    assert "both systems agree on every order" in lines
    [allocated] = [line for line in lines if line.startswith("allocated ")]
    assert "(served by new)" in allocated
    batchref = allocated.split(" -> ")[1].split()[0]
    assert lines[-1].startswith(f"legacy's own    GET /batches/{batchref}: allocated ")
    assert lines[-1].endswith("(written back by back-sync)")


def test_the_demo_ends_with_the_new_systems_write_in_legacys_own_answer(tmp_path: Path) -> None:
    """The allocation the new system decided is what legacy's GET /batches/<ref> shows:
    its allocated quantity grew by the line's quantity (run_demo is False otherwise)."""
    import sqlite3

    lines: list[str] = []
    assert run_demo(tmp_path, echo=lines.append) is True
    with sqlite3.connect(tmp_path / "legacy.db") as legacy:
        markers = legacy.execute(
            "SELECT kind, route, summary FROM strangler_origin ORDER BY origin_id"
        ).fetchall()
    assert markers[0][0] == "fence"
    assert markers[1][:2] == ("decision", "POST /allocate")


def test_demo_command_exits_zero_and_prints_only_its_own_lines() -> None:
    strangler = Path(sys.executable).parent / "strangler"
    result = subprocess.run([str(strangler), "demo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "both systems agree on every order" in result.stdout
    assert result.stderr == ""  # no log line of the kit's parts or of a library
    assert all(" INFO " not in line for line in result.stdout.splitlines())


def test_demo_keep_running_ends_with_the_console_url_and_stops_on_ctrl_c() -> None:
    strangler = Path(sys.executable).parent / "strangler"
    demo = subprocess.Popen(
        [str(strangler), "demo", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while not (lines and lines[-1].startswith("console ")):
            assert time.monotonic() < deadline, lines
            line = demo.stdout.readline()
            assert line, f"the demo ended early: {lines}"
            lines.append(line.rstrip("\n"))
        console = lines[-1].split()[-1]
        [token_line] = [line for line in lines if line.startswith("admin token ")]
        token = token_line.split()[2]
        facade = console.removesuffix("/_strangler/ui")
        assert console == f"{facade}/_strangler/ui"
        [facade_line] = [line for line in lines if line.startswith("facade ")]
        assert facade_line.split()[1] == facade
        # still running: the facade answers, and its admin API takes the printed token
        assert requests.get(f"{facade}/_strangler/health", timeout=10).status_code == 200
        routes = requests.get(
            f"{facade}/_strangler/routes", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert routes.status_code == 200
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
