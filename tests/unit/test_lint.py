"""ruff (lint and format), mypy and the import contracts are part of the test command: a
lint, format or type error or a broken layering rule fails the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONFIG = PYPROJECT["tool"]["importlinter"]
CONTRACTS = [contract["name"] for contract in CONFIG["contracts"]]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_finds_nothing() -> None:
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def lint_imports(project: Path) -> tuple[int, str]:
    """Run ``lint-imports`` on ``project``; its output with lines unwrapped."""
    env = {**os.environ, "PYTHONPATH": str(project), "COLUMNS": "1000"}
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_every_import_contract_is_kept() -> None:
    returncode, output = lint_imports(ROOT)
    assert returncode == 0, output
    for name in CONTRACTS:
        assert f"{name} KEPT" in output, f"not checked: {name}\n{output}"


@pytest.mark.parametrize(
    ("module", "violation", "contract"),
    [
        (
            "new_domain/domain/model.py",
            "import sqlalchemy",
            "new_domain's domain is pure: no I/O library, no broker, no other new_domain layer",
        ),
        (
            "skeleton_app/gate.py",
            "from new_domain.adapters import orm",
            "new_domain is imported only through its public API (new_domain/__init__.py)",
        ),
        (
            "skeleton_app/gate.py",
            "import legacy_bridge",
            "the facade (skeleton_app outside its composition root) imports no legacy_bridge, "
            "examples, migrations or broker",
        ),
        (
            "new_domain/service_layer/handlers.py",
            "from new_domain.adapters import orm",
            "new_domain's handlers and message bus import no adapter or entrypoint",
        ),
        (
            "new_domain/adapters/orm.py",
            "from new_domain.service_layer import messagebus",
            "new_domain's layers: entrypoints > ingest > service_layer | adapters > domain",
        ),
        (
            "new_domain/adapters/dead_letters.py",
            "from new_domain.ingest import apply",
            "new_domain's layers: entrypoints > ingest > service_layer | adapters > domain",
        ),
        (
            "new_domain/ingest/ports.py",
            "from new_domain.domain import model",
            "ingestion's ports import nothing of the new domain",
        ),
        (
            "legacy_bridge/relay.py",
            "import new_domain",
            "legacy_bridge and new_domain share no code (only the change-event contract)",
        ),
        (
            "new_domain/adapters/schema.py",
            "import migrations",
            "new_domain imports only broker of ours (no legacy_bridge, skeleton_app, examples, "
            "migrations)",
        ),
        (
            "broker/memory.py",
            "from tests import services",
            "nothing shipped imports bench or tests",
        ),
        (
            "backsync/runner.py",
            "import new_domain",
            "backsync imports only broker of ours (no new_domain, skeleton_app, legacy_bridge, "
            "examples, migrations)",
        ),
        (
            "skeleton_app/gate.py",
            "import backsync",
            "backsync is transitional: only the composition root imports it",
        ),
    ],
)
def test_a_broken_layering_rule_fails_naming_its_contract(
    tmp_path: Path, module: str, violation: str, contract: str
) -> None:
    assert contract in CONTRACTS
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in CONFIG["root_packages"]:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    with (tmp_path / module).open("a") as source:
        source.write(f"\n{violation}  # the deliberate violation\n")

    returncode, output = lint_imports(tmp_path)

    assert returncode != 0, output
    assert f"{contract} BROKEN" in output, output
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> " in output, output  # the offending import is named


def test_new_domain_functions_stay_short_and_the_consumer_loop_small() -> None:
    """Where a change goes should be visible: no function of the new domain over 60 lines,
    and the consumer's entry point only connects, fills batches and acks (under 250)."""
    import ast

    long_ones = []
    for path in sorted((ROOT / "new_domain").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long_ones.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long_ones == []
    consumer = ROOT / "new_domain" / "entrypoints" / "consumer.py"
    assert len(consumer.read_text().splitlines()) < 250
