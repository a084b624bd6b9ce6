"""The least-privilege RabbitMQ users ship twice, and both say the same: the script for
an existing broker (``deploy/rabbitmq/users.sh``) and the definitions docker-compose
loads (``deploy/rabbitmq/definitions.json``), whose passwords match the services' URLs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "rabbitmq"


def granted_by_script(tmp_path: Path) -> dict[str, tuple[str, str, str]]:
    """What ``users.sh`` asks rabbitmqctl for, recorded by a stand-in rabbitmqctl."""
    log = tmp_path / "calls"
    fake = tmp_path / "rabbitmqctl"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >>"{log}"; printf "\\n" >>"{log}"\n')
    fake.chmod(0o755)
    env = {**os.environ, "RABBITMQCTL": str(fake), "BRIDGE_PASSWORD": "b", "CONSUMER_PASSWORD": "c"}
    done = subprocess.run([str(DEPLOY / "users.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    granted = {}
    for line in log.read_text().splitlines():
        args = line.split("\0")[:-1]
        if "set_permissions" in args:
            user, configure, write, read = args[args.index("set_permissions") + 3 :]
            granted[user] = (configure, write, read)
    return granted


def definitions() -> dict:
    return json.loads((DEPLOY / "definitions.json").read_text())


def test_the_definitions_grant_what_the_script_grants(tmp_path: Path) -> None:
    script = granted_by_script(tmp_path)
    loaded = {
        p["user"]: (p["configure"], p["write"], p["read"])
        for p in definitions()["permissions"]
        if p["user"] != "admin"
    }
    assert script == loaded
    assert set(script) == {"strangler-bridge", "strangler-consumer"}


def test_only_the_bridge_may_write_to_legacy_cdc() -> None:
    import re

    writers = [
        p["user"]
        for p in definitions()["permissions"]
        if re.fullmatch(p["write"], "legacy.cdc") and p["user"] != "admin"
    ]
    assert writers == ["strangler-bridge"]


def test_every_compose_broker_url_names_a_defined_user_with_its_password() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    users = {u["name"]: u["password_hash"] for u in definitions()["users"]}
    seen = set()
    for name, service in compose["services"].items():
        url = (service.get("environment") or {}).get("BROKER_URL")
        if not url:
            continue
        parts = urlsplit(url)
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        raw = base64.b64decode(users[user])
        salt, digest = raw[:4], raw[4:]
        assert hashlib.sha256(salt + password.encode()).digest() == digest, name
        seen.add((name, user))
    assert ("bridge", "strangler-bridge") in seen
    assert ("consumer", "strangler-consumer") in seen
