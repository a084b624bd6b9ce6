"""What every benchmark is given: services, where to write, and the run's options."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from bench.services import Services


@dataclass(frozen=True)
class Context:
    """Options shared by the benchmarks of one run.

    ``smoke``: tiny sizes, short phases (figures mean nothing, the code paths run).
    ``load_tool``: ``wrk`` or ``python`` (the HTTP benchmarks' load generator).
    ``profile_dir``: run the bridge and consumer under pyinstrument, reports there.
    ``bridge_args`` / ``consumer_args``: extra options for ``strangler bridge run`` and
    ``strangler consume`` (to try settings; the default is the commands' defaults).
    ``rate``: changes per second for the lag benchmark (default: its own).
    """

    services: Services
    work_dir: Path
    smoke: bool = False
    load_tool: str = "wrk"
    profile_dir: Path | None = None
    bridge_args: tuple[str, ...] = field(default_factory=tuple)
    consumer_args: tuple[str, ...] = field(default_factory=tuple)
    rate: int | None = None

    def logs(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def seconds(self, full: float, smoke: float) -> float:
        """A phase length: ``full`` normally, ``smoke`` in a smoke run."""
        return smoke if self.smoke else full


def split_args(text: str | None) -> tuple[str, ...]:
    return tuple(shlex.split(text)) if text else ()
