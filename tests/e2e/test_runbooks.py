"""The runbooks in docs/runbooks/ are executed here, so a runbook that no longer matches
the code fails the build; the event documentation is checked against its schemas.

The runbooks are rehearsed in one terminal session, in the order of ``ORDER``: each starts
where the previous ones left the system (its "Starting point" says so), on fresh
PostgreSQL databases and a fresh RabbitMQ virtual host. The environment variables the
runbooks rely on (docs/runbooks/README.md) are set to those; ports are free ones.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import click
import jsonschema
import pytest
import yaml

from tests.e2e.processes import free_port
from tests.e2e.runbook import (
    RunbookSyntaxError,
    Shell,
    Step,
    StepFailed,
    missing_fragments,
    parse_steps,
)
from tests.services import postgres_database, require_haproxy, require_rabbitmq, unique_name

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNBOOKS = DOCS / "runbooks"

ORDER = (
    "install-the-bridge.md",
    "move-a-read-route.md",
    "upgrade-the-new-schema.md",
    "rabbitmq-outage.md",
    "roll-back-a-route.md",
    "rebuild-the-read-model.md",
    "dead-letter-queue.md",
    "decommission.md",
    "move-the-write-routes.md",
    "run-on-a-cluster-and-add-consumers.md",
)
"""Runbooks with commands, in the order they are rehearsed."""

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def runbook_steps(name: str) -> list[Step]:
    path = RUNBOOKS / name
    return parse_steps(path.read_text(), source=str(path.relative_to(ROOT)))


def runbook_files() -> list[Path]:
    return sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")


# --- the convention itself -------------------------------------------------------------


def test_commands_and_their_expected_output_are_read_from_sh_blocks_only() -> None:
    text = "\n".join(
        [
            "Intro.",
            "```text",
            "$ not a command",
            "```",
            "```sh",
            "# a comment",
            "$ echo one \\",
            "    two",
            "one two",
            "",
            "$ strangler consume >consume.log 2>&1 &",
            "$ true && echo done",
            "done",
            "```",
        ]
    )
    steps = parse_steps(text, "x.md")
    assert [s.command for s in steps] == [
        "echo one \\\n    two",
        "strangler consume >consume.log 2>&1 &",
        "true && echo done",
    ]
    assert [s.expected for s in steps] == [("one two",), (), ("done",)]
    assert [s.line for s in steps] == [7, 11, 12]
    assert [s.background for s in steps] == [False, True, False]


@pytest.mark.parametrize(
    "text",
    [
        "```sh\noutput before any command\n```",
        "```sh\n$ sleep 1 &\nexpected output of a background job\n```",
        "```sh\n$ echo unclosed\n",
    ],
)
def test_a_block_that_breaks_the_convention_is_an_error(text: str) -> None:
    with pytest.raises(RunbookSyntaxError):
        parse_steps(text)


def test_expected_fragments_match_in_order_with_ellipsis_and_flexible_spaces() -> None:
    output = "GET     /allocations/<orderid>  new\ninstalled (install id 1234-abcd)\n"
    assert missing_fragments(output, ("GET /allocations/<orderid> new",)) == []
    assert missing_fragments(output, ("installed (install id ...)",)) == []
    assert missing_fragments(output, ("installed", "GET")) == ["GET"]
    assert missing_fragments(output, ("X-Served-By: new",)) == ["X-Served-By: new"]


def test_every_runbook_with_commands_is_rehearsed_and_parses() -> None:
    with_commands = {p.name for p in runbook_files() if runbook_steps(p.name)}
    assert with_commands == set(ORDER), "add the runbook to ORDER (or remove it)"
    for name in ORDER:
        assert any(s.expected for s in runbook_steps(name)), f"{name} checks no output"


# --- the rehearsal ---------------------------------------------------------------------


@contextmanager
def rabbitmq_vhost(amqp_url: str) -> Iterator[str]:
    """A fresh RabbitMQ virtual host for the runbooks' default exchange and queue names."""
    if not Path(RABBITMQCTL).exists():
        pytest.fail("the runbooks need rabbitmqctl (RabbitMQ's admin tool) on this machine")
    parts = urlsplit(amqp_url)
    user = parts.username or "guest"
    vhost = unique_name("runbooks")
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        ensure_rabbitmq_running()
        _rabbitmqctl("delete_vhost", vhost)


def _rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [RABBITMQCTL, "-q", *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stderr}"
    return result


def ensure_rabbitmq_running() -> None:
    """Start RabbitMQ's application again if a runbook stopped it and did not restart it."""
    status = subprocess.run(
        [RABBITMQCTL, "-q", "await_startup", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if status.returncode != 0:
        subprocess.run([RABBITMQCTL, "-q", "start_app"], capture_output=True, timeout=120)
        _rabbitmqctl("await_startup", "--timeout", "120", timeout=180)


@dataclass
class Rehearsal:
    """One terminal session in which the runbooks are followed one after another."""

    shell: Shell
    results: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def follow(self, name: str) -> None:
        """Follow ``name``, after every earlier runbook of ``ORDER`` (each once)."""
        for earlier in ORDER[: ORDER.index(name)]:
            if earlier not in self.results:
                self._follow(earlier)
            if self.results[earlier] != "ok":
                pytest.fail(f"{name} starts where {earlier} ends, and {earlier} failed")
        self._follow(name)
        if self.results[name] != "ok":
            pytest.fail(self.results[name], pytrace=False)

    def _follow(self, name: str) -> None:
        steps = runbook_steps(name)
        self.results[name] = "running"
        started = time.monotonic()
        try:
            for step in steps:
                self.shell.run(step)
        except StepFailed as failure:
            self.results[name] = (
                f"{failure}\n\n--- background logs\n{self.shell.background_logs()}"
                f"\n\n--- steps so far\n" + "\n".join(self.shell.transcript[-15:])
            )
        else:
            self.results[name] = "ok"
        finally:
            self.timings[name] = time.monotonic() - started
            if any("rabbitmqctl stop_app" in step.command for step in steps):
                ensure_rabbitmq_running()


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    amqp_url = require_rabbitmq()
    require_haproxy()  # the facade runs behind its data plane, as in production
    base = tmp_path_factory.mktemp("runbooks")
    with ExitStack() as stack:
        legacy_db = stack.enter_context(postgres_database("runbook_legacy"))
        new_db = stack.enter_context(postgres_database("runbook_new"))
        broker_url = stack.enter_context(rabbitmq_vhost(amqp_url))
        legacy_port, facade_port = free_port(), free_port()
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LEGACY_DB_URL": legacy_db,
            "NEW_DB_URL": new_db,
            "BROKER_URL": broker_url,
            "LEGACY_PORT": str(legacy_port),
            "LEGACY_URL": f"http://127.0.0.1:{legacy_port}",
            "FACADE_PORT": str(facade_port),
            "FACADE_URL": f"http://127.0.0.1:{facade_port}",
            "ADMIN_TOKEN": secrets.token_urlsafe(24),
        }
        shell = Shell(workdir=base / "work", env=env, logs=base / "steps")
        shell.start()
        stack.callback(shell.stop)
        session = Rehearsal(shell)
        yield session
        print("\nrunbook timings:", {k: round(v, 1) for k, v in session.timings.items()})
        print("\n".join(shell.transcript))


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", ORDER)
def test_runbook(name: str, rehearsal: Rehearsal) -> None:
    rehearsal.follow(name)
    assert rehearsal.results[name] == "ok"


# --- the event documentation -----------------------------------------------------------


def _file_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                yield value
            else:
                yield from _file_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _file_refs(item)


def test_asyncapi_document_names_both_exchanges_and_valid_schemas() -> None:
    document = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert str(document["asyncapi"]).startswith("3.")
    bindings = [channel["bindings"]["amqp"] for channel in document["channels"].values()]
    exchanges = {b["exchange"]["name"] for b in bindings if b.get("is") == "routingKey"}
    assert {"legacy.cdc", "new_domain.events"} <= exchanges
    refs = sorted(set(_file_refs(document)))
    referenced = {(DOCS / ref.split("#", 1)[0]).resolve() for ref in refs}
    for schema_file in sorted((DOCS / "schemas").glob("*.json")):
        assert schema_file.resolve() in referenced, f"asyncapi.yaml omits {schema_file.name}"
    for ref in refs:
        path = (DOCS / ref.split("#", 1)[0]).resolve()
        assert path.is_file(), f"asyncapi.yaml references {ref}, which does not exist"
        schema = json.loads(path.read_text())
        jsonschema.validators.validator_for(schema).check_schema(schema)


def test_readme_links_every_runbook_and_document() -> None:
    readme = (ROOT / "README.md").read_text()
    documents = [
        *runbook_files(),
        RUNBOOKS / "README.md",
        DOCS / "architecture.md",
        DOCS / "events.md",
        DOCS / "asyncapi.yaml",
    ]
    for path in documents:
        link = f"]({path.relative_to(ROOT)})"
        assert link in readme, f"README.md does not link {path.relative_to(ROOT)}"


def test_relative_links_in_the_docs_point_to_existing_files() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md"), *RUNBOOKS.glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def _readme_strangler_commands() -> list[list[str]]:
    """``strangler ...`` command lines of the README's sh blocks after the set-up block."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    commands = []
    for block in blocks[1:]:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #", 1)[0].rstrip(" &"))
            if words[:1] == ["strangler"]:
                commands.append(words[1:])
    return commands


def test_readme_tour_uses_only_existing_commands_and_options() -> None:
    from skeleton_app.composition.cli import cli

    commands = _readme_strangler_commands()
    assert len(commands) >= 8
    for words in commands:
        command: click.Command = cli
        rest = list(words)
        while isinstance(command, click.Group) and rest and rest[0] in command.commands:
            command = command.commands[rest.pop(0)]
        assert not isinstance(command, click.Group), f"README: no command 'strangler {words}'"
        known = {name for param in command.params for name in getattr(param, "opts", [])}
        for word in rest:
            flag = word.split("=", 1)[0]
            assert not flag.startswith("--") or flag in known, (
                f"README: 'strangler {' '.join(words)}' uses unknown option {flag}"
            )
