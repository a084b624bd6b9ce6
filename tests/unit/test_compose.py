"""docker-compose.yml stays valid and every service runs a command the CLI really has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft7Validator

from examples.legacy_shop import TABLES
from skeleton_app.composition.cli import cli

ROOT = Path(__file__).resolve().parents[2]
KIT_SERVICES = {"legacy-shop", "bridge-install", "bridge", "db-upgrade", "consumer", "facade"}


SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml, validated against the Compose specification's JSON Schema
    (shipped in tests/schemas: no Docker tool needed). Where ``docker-compose`` is
    installed, its own ``config`` must accept the file too and see the same services."""
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(Draft7Validator(schema).iter_errors(loaded), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    tool = shutil.which("docker-compose")
    if tool is not None:
        result = subprocess.run(
            [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert set(yaml.safe_load(result.stdout)["services"]) == set(loaded["services"])
    return loaded


def test_the_schema_refuses_what_compose_refuses() -> None:
    """The check can fail: a misspelt key and a wrong type are reported."""
    schema = json.loads(SCHEMA.read_text())
    broken = {"services": {"facade": {"image": 8000, "restart_policy": "always"}}}
    messages = {e.message for e in Draft7Validator(schema).iter_errors(broken)}
    assert "8000 is not of type 'string'" in messages
    assert any("restart_policy" in m for m in messages)


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


CLUSTER = ROOT / "docker-compose.cluster.yml"
NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")


@pytest.fixture(scope="module")
def cluster() -> dict:
    """docker-compose.yml with docker-compose.cluster.yml over it: the override is valid
    on its own (schema), and where ``docker-compose`` is installed, the merged file is
    what ``config`` prints; else the override's services over the base's, key by key."""
    override = yaml.safe_load(CLUSTER.read_text())
    schema = json.loads(SCHEMA.read_text())
    errors = list(Draft7Validator(schema).iter_errors(override))
    assert not errors, "; ".join(e.message for e in errors)
    tool = shutil.which("docker-compose")
    if tool is not None:
        result = subprocess.run(
            [tool, "-f", str(ROOT / "docker-compose.yml"), "-f", str(CLUSTER), "config"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return yaml.safe_load(result.stdout)
    merged = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in override["services"].items():
        base = merged["services"].setdefault(name, {})
        for key, value in service.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
    return merged


def test_the_cluster_profile_runs_three_nodes_that_find_each_other(cluster: dict) -> None:
    conf = (ROOT / "deploy" / "rabbitmq" / "cluster.conf").read_text()
    listed = re.findall(
        r"^cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)$", conf, re.M
    )
    services = cluster["services"]
    assert [services[n]["hostname"] for n in NODES] == listed == list(NODES)
    cookies = {
        str(services[n]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]) for n in NODES
    }
    assert len(cookies) == 1 and "-setcookie" in cookies.pop()
    for name in NODES:
        mounts = " ".join(services[name]["volumes"])
        assert "cluster.conf" in mounts and "definitions.json" in mounts, name


def test_on_the_cluster_every_kit_process_lists_every_node_and_waits_for_them(
    cluster: dict,
) -> None:
    services = cluster["services"]
    for name in ("bridge", "consumer", "facade"):
        urls = services[name]["environment"]["BROKER_URL"].split(",")
        hosts = [re.match(r"amqp://[^@]+@([^:/]+)", url).group(1) for url in urls]  # type: ignore[union-attr]
        assert hosts == list(NODES), name
        users = {url.split("://")[1].split(":")[0] for url in urls}
        assert len(users) == 1, name  # the same least-privilege user on every node
        for node in NODES:
            assert services[name]["depends_on"][node]["condition"] == "service_healthy", name
