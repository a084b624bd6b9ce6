"""Read the runbooks in ``docs/runbooks/`` and run their commands in a real shell.

The convention (also written down in ``docs/runbooks/README.md``):

- Only fenced blocks opened with exactly ```` ```sh ```` are executed; other blocks
  (```` ```text ````, ```` ```console ````) are illustrations.
- In an executed block, a line starting with ``$ `` is a command. A command whose line
  ends with ``\\`` continues on the next line(s).
- The lines after a command, up to the next ``$ `` line or the end of the block, are
  fragments of its expected output (stdout and stderr together). Each must be found in
  the output, in the order written; ``...`` stands for any text on that line and a run
  of spaces matches any run of spaces or tabs. Blank lines are ignored.
- Lines starting with ``#`` are comments for the reader and are not checked.
- Every command must exit 0 (write ``! cmd`` for a command that must fail).
- A command ending with ``&`` starts a background process: it has no expected output;
  the runner tracks it and stops it (SIGTERM, then SIGKILL) when the runbooks are done.

Commands run one after another in ONE ``bash`` process, so ``export``, ``cd``, ``$!``
and shell variables carry over from a command to the next, across blocks and across
runbooks — as in the terminal of the person following them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SH_FENCE = re.compile(r"^```sh\s*$")
ANY_FENCE = re.compile(r"^```")
PROMPT = "$ "


class RunbookSyntaxError(ValueError):
    """A runbook's ``sh`` block does not follow the convention."""


@dataclass(frozen=True)
class Step:
    """One command of a runbook and the output fragments it must print."""

    source: str
    line: int
    command: str
    expected: tuple[str, ...] = ()

    @property
    def background(self) -> bool:
        return self.command.rstrip().endswith("&") and not self.command.rstrip().endswith("&&")

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def parse_steps(text: str, source: str = "<runbook>") -> list[Step]:
    """The commands of every ``sh`` block of a Markdown text, in order."""
    steps: list[Step] = []
    lines = text.splitlines()
    in_sh = in_other = False
    command: list[str] | None = None
    command_line = 0
    expected: list[str] = []

    def finish() -> None:
        nonlocal command, expected
        if command is not None:
            step = Step(source, command_line, "\n".join(command), tuple(expected))
            if step.background and step.expected:
                raise RunbookSyntaxError(
                    f"{step.where()}: a background command (ending with &) cannot "
                    "have expected output"
                )
            steps.append(step)
        command, expected = None, []

    continued = False
    for number, line in enumerate(lines, start=1):
        if not in_sh and not in_other:
            if SH_FENCE.match(line):
                in_sh = True
            elif ANY_FENCE.match(line):
                in_other = True
            continue
        if in_other:
            if ANY_FENCE.match(line):
                in_other = False
            continue
        if ANY_FENCE.match(line):  # end of the sh block
            if continued:
                raise RunbookSyntaxError(f"{source}:{number}: block ends inside a command")
            finish()
            in_sh = False
            continue
        if continued and command is not None:
            command.append(line)
            continued = line.endswith("\\")
            continue
        if line.startswith(PROMPT):
            finish()
            command, command_line = [line[len(PROMPT) :]], number
            continued = line.endswith("\\")
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        elif command is None:
            raise RunbookSyntaxError(
                f"{source}:{number}: text before the first command of an sh block "
                f"(commands start with {PROMPT!r}): {line!r}"
            )
        else:
            expected.append(line.strip())
    if in_sh:
        raise RunbookSyntaxError(f"{source}: an sh block is not closed")
    return steps


def fragment_pattern(fragment: str) -> re.Pattern[str]:
    """A regex for one expected-output line: ``...`` is any text, spaces are flexible."""
    parts = []
    for piece in re.split(r"(\.\.\.|\s+)", fragment):
        if piece == "...":
            parts.append(r"[^\n]*?")
        elif piece and piece.isspace():
            parts.append(r"[ \t]+")
        elif piece:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def missing_fragments(output: str, expected: tuple[str, ...]) -> list[str]:
    """The expected fragments not found in ``output`` (searched in order)."""
    position, missing = 0, []
    for fragment in expected:
        found = fragment_pattern(fragment).search(output, position)
        if found is None:
            missing.append(fragment)
        else:
            position = found.end()
    return missing


class StepFailed(AssertionError):
    """A runbook command failed, timed out or did not print what the runbook says."""


@dataclass
class Shell:
    """One ``bash`` that runs runbook steps the way a person at a terminal would."""

    workdir: Path
    env: dict[str, str]
    logs: Path
    timeout: float = 90.0
    process: subprocess.Popen[str] | None = None
    jobs: set[int] = field(default_factory=set)
    counter: int = 0
    transcript: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=(self.logs / "shell.out").open("w"),
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env,
            text=True,
            start_new_session=True,
        )
        # job control: every background job gets its own process group, so it can be
        # stopped with everything it started
        self._send("set -m\n")

    def _send(self, script: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(script)
        self.process.stdin.flush()

    def run(self, step: Step) -> str:
        """Run ``step``; return its output or raise :class:`StepFailed`."""
        if self.process is None or self.process.poll() is not None:
            raise StepFailed(f"{step.where()}: the shell is not running")
        self.counter += 1
        out = self.logs / f"{self.counter:03d}.out"
        rc = self.logs / f"{self.counter:03d}.rc"
        jobs = self.logs / f"{self.counter:03d}.jobs"
        self._send(
            f"{{ {step.command}\n}} >{_quote(out)} 2>&1 </dev/null\n"
            f"__rc=$?; jobs -p >{_quote(jobs)}; echo $__rc >{_quote(rc)}.tmp; "
            f"mv {_quote(rc)}.tmp {_quote(rc)}\n"
        )
        started = time.monotonic()
        deadline = started + self.timeout
        while not rc.exists():
            if self.process.poll() is not None:
                raise StepFailed(
                    f"{step.where()}: the shell exited running:\n$ {step.command}\n{_tail(out)}"
                )
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"{step.where()}: still running after {self.timeout:.0f}s:\n"
                    f"$ {step.command}\n{_tail(out)}"
                )
            time.sleep(0.05)
        self.jobs.update(int(pid) for pid in jobs.read_text().split())
        status = int(rc.read_text().strip() or "255")
        output = "" if step.background else out.read_text(errors="replace")
        self.transcript.append(
            f"[{time.monotonic() - started:5.1f}s] {step.where()} $ {step.command}"
        )
        if status != 0:
            raise StepFailed(
                f"{step.where()}: exit status {status}:\n$ {step.command}\n{_tail(out)}"
            )
        missing = missing_fragments(output, step.expected)
        if missing:
            raise StepFailed(
                f"{step.where()}: expected output not found: {missing[0]!r}\n"
                f"$ {step.command}\n{_tail(out)}"
            )
        return output

    def background_logs(self) -> str:
        """The last lines of every file the runbooks wrote into the working folder."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {path.name}\n{_tail(path, 1500)}")
        return "\n".join(parts)

    def stop(self, grace: float = 15.0) -> None:
        """Stop every background job (SIGTERM, then SIGKILL), then the shell itself."""
        if self.process is None:
            return
        session = self.process.pid
        groups = (self.jobs | _process_groups_in_session(session)) - {session}
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_group_alive(g, session) for g in groups):
            time.sleep(0.1)
        for group in _process_groups_in_session(session) - {session}:
            _signal_group(group, signal.SIGKILL)
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(session, signal.SIGKILL)
            self.process.wait()


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return text[-limit:] if text else "(no output)"


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, process group, session, state) of every process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append((int(entry.name), int(fields[2]), int(fields[3]), fields[0]))
    return found


def _process_groups_in_session(session: int) -> set[int]:
    return {pgrp for _pid, pgrp, sid, state in _processes() if sid == session and state != "Z"}


def _group_alive(group: int, session: int) -> bool:
    return any(
        pgrp == group and sid == session and state != "Z" for _pid, pgrp, sid, state in _processes()
    )
