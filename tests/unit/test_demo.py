"""`strangler demo` runs the whole pipeline in one process and both systems agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from skeleton_app.composition.demo import run_demo


def test_demo_new_system_answers_like_legacy(tmp_path: Path) -> None:
    lines: list[str] = []
    assert run_demo(tmp_path, echo=lines.append) is True
    rows = [line for line in lines if line.startswith("order-")]
    assert len(rows) == 5
    assert all(row.rstrip().endswith("new") for row in rows)
    assert not any("differs" in row for row in rows)
    assert lines[-1] == "both systems agree on every order"


def test_demo_command_exits_zero() -> None:
    strangler = Path(sys.executable).parent / "strangler"
    result = subprocess.run([str(strangler), "demo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "both systems agree on every order" in result.stdout
