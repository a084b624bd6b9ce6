"""docker-compose.yml stays valid and every service runs a command the CLI really has."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from examples.legacy_shop import TABLES
from skeleton_app.composition.cli import cli

ROOT = Path(__file__).resolve().parents[2]
KIT_SERVICES = {"legacy-shop", "bridge-install", "bridge", "db-upgrade", "consumer", "facade"}


@pytest.fixture(scope="module")
def compose() -> dict:
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("docker-compose is not installed (CI=true)", pytrace=False)
        pytest.skip("docker-compose is not installed")
    result = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_has_every_part_of_the_kit(compose: dict) -> None:
    assert KIT_SERVICES | {"postgres", "rabbitmq"} <= set(compose["services"])
    assert "management" in compose["services"]["rabbitmq"]["image"]


def test_long_running_services_have_health_checks(compose: dict) -> None:
    for name in ("postgres", "rabbitmq", "legacy-shop", "facade"):
        assert compose["services"][name].get("healthcheck", {}).get("test"), name


def test_every_kit_service_is_configured_and_runs_a_real_command(compose: dict) -> None:
    runner = CliRunner()
    for name in KIT_SERVICES:
        service = compose["services"][name]
        env = service["environment"]
        for var in ("LEGACY_DB_URL", "NEW_DB_URL", "BROKER_URL", "LEGACY_URL"):
            assert env.get(var), f"{name} lacks {var}"
        command = service["command"]
        result = runner.invoke(cli, [*command, "--help"])
        assert result.exit_code == 0, f"{name}: strangler {' '.join(command)}: {result.output}"


def test_the_bridge_captures_the_shop_tables() -> None:
    """Read without docker-compose: the bridge knows no table names of its own."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    install = services["bridge-install"]
    assert install["command"] == ["bridge", "install"]
    assert install["environment"]["BRIDGE_TABLES"] == ",".join(TABLES)
    assert install["environment"]["LEGACY_DB_URL"]  # the shared settings are kept


def test_services_start_in_dependency_order(compose: dict) -> None:
    deps = {name: set(s.get("depends_on", {})) for name, s in compose["services"].items()}
    assert "bridge-install" in deps["bridge"]
    assert "db-upgrade" in deps["consumer"]
    assert "db-upgrade" in deps["facade"]
