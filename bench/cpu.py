"""CPU time of the pieces a capture pipeline runs on: a PostgreSQL cluster (its
postmaster, live backends and the backends it has reaped), RabbitMQ (``beam.smp``), and
the benchmark's own processes (:meth:`bench.processes.Processes.cpu_seconds`).

Cumulative seconds are read before and after a phase; :func:`cores` turns the
differences into cores used (CPU seconds per second of the phase).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import psycopg

Sampler = Callable[[], float]


def cores(
    before: Mapping[str, float], after: Mapping[str, float], seconds: float
) -> dict[str, float]:
    """Cores each piece used between two samples (pieces missing from either are left
    out; a negative difference, a restarted process, counts as 0)."""
    if seconds <= 0:
        raise ValueError("the phase must last longer than 0 s")
    return {
        name: round(max(0.0, after[name] - before[name]) / seconds, 3)
        for name in before
        if name in after
    }


def stat_ticks(text: str, *, children: bool) -> int:
    """utime + stime of a ``/proc/<pid>/stat`` line, with cutime + cstime (the children
    the process has waited for) when ``children``."""
    fields = text.rsplit(")", 1)[1].split()  # fields[0] is the state (field 3)
    ticks = int(fields[11]) + int(fields[12])
    return ticks + int(fields[13]) + int(fields[14]) if children else ticks


def _hertz() -> int:
    return os.sysconf("SC_CLK_TCK")


def postmaster_pid(dsn: str) -> int:
    """The postmaster of the cluster ``dsn`` reaches (from its ``postmaster.pid``; needs
    a superuser and the cluster on this machine)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])


def cluster_cpu(postmaster: int) -> Sampler:
    """CPU seconds of a PostgreSQL cluster so far: the postmaster with the children it
    reaped, plus its live children."""

    def sample() -> float:
        ticks = stat_ticks(Path(f"/proc/{postmaster}/stat").read_text(), children=True)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
                if int(text.rsplit(")", 1)[1].split()[1]) == postmaster:
                    ticks += stat_ticks(text, children=False)
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
        return ticks / _hertz()

    return sample


def cluster_cpu_of(dsn: str) -> Sampler | None:
    """:func:`cluster_cpu` of the cluster ``dsn`` reaches; None when its postmaster is
    not readable here (another machine, a container)."""
    try:
        return cluster_cpu(postmaster_pid(dsn))
    except (OSError, ValueError, IndexError, psycopg.Error):
        return None


def command_cpu(command: str) -> Sampler:
    """CPU seconds so far of the live processes named ``command`` (``beam.smp``)."""

    def sample() -> float:
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
                if text.split("(", 1)[1].rsplit(")", 1)[0] == command:
                    ticks += stat_ticks(text, children=False)
            except (OSError, IndexError, ValueError):
                continue
        return ticks / _hertz()

    return sample


def children_cpu() -> float:
    """CPU seconds of this process's children it has waited for (pgbench runs)."""
    usage = os.times()
    return usage.children_user + usage.children_system


def sample_all(samplers: Mapping[str, Sampler]) -> dict[str, float]:
    """One sample of each; a sampler that fails (its process ended) is left out."""
    values: dict[str, float] = {}
    for name, sampler in samplers.items():
        try:
            values[name] = sampler()
        except (OSError, ValueError, psycopg.Error):
            continue
    return values
