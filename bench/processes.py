"""The kit's own processes (``strangler ...``), started, watched and stopped by a benchmark."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

STRANGLER = shutil.which("strangler", path=str(Path(sys.executable).parent)) or "strangler"


_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) ")
_EXPECTED = re.compile(r"Channel\.Close \(404\)")  # the broker adapter's passive declares


class BenchmarkFailed(Exception):
    """The benchmark could not produce its figures (a process died, a deadline passed)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s.

    A :class:`BenchmarkFailed` raised by ``condition`` ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except BenchmarkFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise BenchmarkFailed(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class Finished:
    """How a process ended: exit code and its peak resident set size.

    The peak is the highest ``VmHWM`` of ``/proc/<pid>/status`` sampled while it ran
    (``ru_maxrss`` would count the copy of this process the child was before ``exec``).
    """

    returncode: int
    peak_rss_bytes: int


class Processes:
    """Long-running processes with their logs in ``logs``; each in its own process group.

    With ``profile_dir``, ``strangler`` processes started with ``profile=True`` run under
    pyinstrument and leave ``<name>.pyinstrument.txt`` there when they stop.
    """

    def __init__(self, logs: Path, env: dict[str, str], profile_dir: Path | None = None) -> None:
        self.logs = logs
        self.env = {**os.environ, **env}
        self.profile_dir = profile_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.finished: dict[str, Finished] = {}
        self._peak_rss: dict[str, int] = {}

    def strangler(self, name: str, *args: str, profile: bool = False) -> subprocess.Popen[bytes]:
        """Start ``strangler ARGS`` (optionally under pyinstrument)."""
        command = [STRANGLER, *args]
        if profile and self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            report = self.profile_dir / f"{name}.pyinstrument.txt"
            command = [
                sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(report),
                STRANGLER, *args,
            ]  # fmt: skip
        return self.start(name, command)

    def start(self, name: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``command`` as ``name`` (a name whose process ended may be started
        again: its log is appended to)."""
        self.finished.pop(name, None)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                list(command), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def check_running(self, *names: str) -> None:
        """Raise :class:`BenchmarkFailed` if one of ``names`` (default: all) has exited."""
        for name in names or tuple(self.procs):
            self.sample_rss(name)
            finished = self._reap(name)
            if finished is not None:
                raise BenchmarkFailed(
                    f"{name} exited with {finished.returncode}:\n{self.log_tail(name)}"
                )

    def log_problems(self, name: str) -> list[str]:
        """WARNING and ERROR lines the process logged (a lost broker connection, a
        database retry...): the figures of a disturbed run are not comparable."""
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return []
        return [
            line[:300]
            for line in text.splitlines()
            if _PROBLEM.search(line) and not _EXPECTED.search(line)
        ]

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def run(self, name: str, command: Sequence[str], timeout: float) -> Finished:
        """Run ``command`` to completion; its exit code and peak RSS."""
        self.start(name, command)
        return self.wait(name, timeout)

    def wait(self, name: str, timeout: float) -> Finished:
        """Wait for a process to exit by itself (stopped after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (finished := self._reap(name)) is None:
            self.sample_rss(name)
            if time.monotonic() >= deadline:
                self.stop(name)
                raise BenchmarkFailed(
                    f"{name} did not finish within {timeout:g} s:\n{self.log_tail(name)}"
                )
            time.sleep(0.02)
        return finished

    def stop(self, name: str, timeout: float = 30.0) -> Finished:
        """SIGTERM the process group, SIGKILL it after ``timeout``; how it ended."""
        finished = self._reap(name)
        if finished is not None:
            return finished
        pid = self.procs[name].pid
        self.sample_rss(name)
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (finished := self._reap(name)) is None:
            if time.monotonic() >= deadline:
                _stacks_to_log(pid)
                _signal_group(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.02)
        return finished

    def stop_all(self) -> None:
        """Stop every process, then kill whatever is left in their process groups
        (workers whose master died first)."""
        for name in list(self.procs):
            self.stop(name)
            _signal_group(self.procs[name].pid, signal.SIGKILL)

    def cpu_seconds(self, name: str) -> float:
        """CPU time (user + system) used so far by the live processes of ``name``'s
        process group (a gunicorn master and its workers, for instance)."""
        return sum(self.cpu_seconds_by_command(name).values())

    def cpu_seconds_by_command(self, name: str) -> dict[str, float]:
        """:meth:`cpu_seconds` split by the processes' command names (``haproxy`` apart
        from the facade's Python processes behind it, for instance)."""
        ticks: dict[str, int] = {}
        for _, parsed in self._group(name):
            ticks[parsed.command] = ticks.get(parsed.command, 0) + parsed.cpu_ticks
        hertz = os.sysconf("SC_CLK_TCK")
        return {command: n / hertz for command, n in ticks.items()}

    def rss_bytes_by_command(self, name: str) -> dict[str, int]:
        """Resident memory now (``VmRSS``) of ``name``'s process group, by command name."""
        rss: dict[str, int] = {}
        for pid, parsed in self._group(name):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss[parsed.command] = rss.get(parsed.command, 0) + int(line.split()[1]) * 1024
        return rss

    def _group(self, name: str) -> Iterator[tuple[int, ProcessStat]]:
        """The live processes of ``name``'s process group."""
        group = self.procs[name].pid
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parsed = parse_stat(stat.read_text())
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
            if parsed.pgrp == group:
                yield int(stat.parent.name), parsed

    def sample_rss(self, name: str) -> None:
        """Note the process's peak RSS so far (``VmHWM``)."""
        try:
            status = Path(f"/proc/{self.procs[name].pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
                self._peak_rss[name] = max(peak, self._peak_rss.get(name, 0))

    def _reap(self, name: str) -> Finished | None:
        """How ``name`` ended, or None while it runs."""
        if name in self.finished:
            return self.finished[name]
        proc = self.procs[name]
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if not pid:
            return None
        proc.returncode = os.waitstatus_to_exitcode(status)
        finished = Finished(proc.returncode, self._peak_rss.get(name, 0))
        self.finished[name] = finished
        return finished


@dataclass(frozen=True)
class ProcessStat:
    """What the benchmarks read of ``/proc/<pid>/stat``."""

    command: str
    pgrp: int
    cpu_ticks: int
    """utime + stime, in clock ticks."""


def parse_stat(text: str) -> ProcessStat:
    """``/proc/<pid>/stat``'s command (the name in parentheses, which may hold spaces and
    parentheses itself), process group and CPU ticks."""
    head, rest = text.rsplit(")", 1)
    fields = rest.split()  # fields[0] is the state
    return ProcessStat(head.split("(", 1)[1], int(fields[2]), int(fields[11]) + int(fields[12]))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)


@contextmanager
def processes(
    logs: Path, env: dict[str, str], profile_dir: Path | None = None
) -> Iterator[Processes]:
    procs = Processes(logs, env, profile_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


def strangler_has_command(*words: str) -> bool:
    """True when ``strangler WORDS --help`` exists (e.g. ``bridge snapshot``)."""
    result = subprocess.run(
        [STRANGLER, *words, "--help"], capture_output=True, text=True, timeout=60
    )
    return result.returncode == 0


def _stacks_to_log(pid: int) -> None:
    """Ask a process that did not stop for its threads' stacks (``strangler``'s
    SIGUSR1), into its log, before it is killed: where it hung is in the error."""
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return
    time.sleep(0.5)  # the dump is written from the signal handler; give it a moment
