"""The legacy shop and the facade under gunicorn, and load phases against them."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass

from bench.context import Context
from bench.http_load import LoadResult, run_load
from bench.kit import wait_http
from bench.processes import Processes, free_port

WORKERS = 2
"""gunicorn workers of both servers (the machine class has 2 cores)."""


@dataclass(frozen=True)
class Servers:
    """Base URLs. ``facade``: ``strangler serve`` (behind the data plane it was given);
    ``facade_alone``: a second one with ``--data-plane none``, when asked for."""

    legacy: str
    facade: str
    facade_alone: str | None = None


def start_servers(
    procs: Processes,
    legacy_db_url: str,
    new_db_url: str,
    probe: str,
    *,
    data_plane: str | None = None,
    alone: bool = False,
) -> Servers:
    """``strangler legacy serve`` and ``strangler serve`` in front of it, both with
    ``WORKERS`` workers and their default threads; waits until ``probe`` answers 200
    through each. ``data_plane``: the facade's ``--data-plane`` (default: the command's
    own default). ``alone``: also a facade with ``--data-plane none`` (process
    ``facade_alone``), in front of the same legacy shop."""
    legacy_port = free_port()
    legacy = f"http://127.0.0.1:{legacy_port}"
    procs.strangler(
        "legacy", "legacy", "serve", "--port", str(legacy_port), "--workers", str(WORKERS),
        "--legacy-db-url", legacy_db_url,
    )  # fmt: skip
    wait_http(procs, "legacy", legacy + probe)
    plane = () if data_plane is None else ("--data-plane", data_plane)
    facade = _start_facade(procs, "facade", legacy, new_db_url, probe, plane)
    facade_alone = None
    if alone:
        none = ("--data-plane", "none")
        facade_alone = _start_facade(procs, "facade_alone", legacy, new_db_url, probe, none)
    return Servers(legacy, facade, facade_alone)


def _start_facade(
    procs: Processes,
    name: str,
    legacy: str,
    new_db_url: str,
    probe: str,
    options: tuple[str, ...],
) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs.strangler(
        name, "serve", "--port", str(port), "--workers", str(WORKERS),
        "--legacy-url", legacy, "--new-db-url", new_db_url, *options,
    )  # fmt: skip
    wait_http(procs, name, url + probe)
    return url


@dataclass(frozen=True)
class Measured:
    """One URL's load phases merged, and the CPU each server spent per request meanwhile."""

    load: LoadResult
    cpu_ms_per_request: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        cpu = {name: round(ms, 3) for name, ms in self.cpu_ms_per_request.items()}
        return {**self.load.as_dict(), "cpu_ms_per_request": cpu}


def interleaved(
    ctx: Context,
    procs: Processes,
    first: str,
    second: str,
    template: str,
    count: int,
    connections: int,
    duration: float,
    rounds: int | None = None,
) -> tuple[Measured, Measured]:
    """:func:`interleaved_many` of two URLs."""
    a, b = interleaved_many(
        ctx, procs, (first, second), template, count, connections, duration, rounds
    )
    return a, b


def interleaved_many(
    ctx: Context,
    procs: Processes,
    urls: Sequence[str],
    template: str,
    count: int,
    connections: int,
    duration: float,
    rounds: int | None = None,
) -> list[Measured]:
    """Load each of ``urls`` in turn, ``rounds`` phases each (default 2, 1 in a smoke run)
    of ``duration / rounds`` seconds, in the order of :func:`phase_order`, so drift hits
    all alike; results merged per URL, with the CPU time every running process group of
    ``procs`` spent (``<name>/haproxy``: its HAProxy's share) and the load tool's
    (``load``)."""
    if rounds is None:
        rounds = 1 if ctx.smoke else 2
    results: dict[str, list[LoadResult]] = {url: [] for url in urls}
    cpu: dict[str, dict[str, float]] = {url: {} for url in urls}
    for url in phase_order(urls, rounds):
        before = _cpu(procs)
        load = run_load(
            ctx.load_tool, url, template, count, connections=connections,
            duration=duration / rounds, work_dir=procs.logs,
        )  # fmt: skip
        results[url].append(load)
        for name, seconds in _cpu(procs).items():
            cpu[url][name] = cpu[url].get(name, 0.0) + seconds - before.get(name, 0.0)
    measured = []
    for url in urls:
        merged = merge_loads(results[url])
        per_request = {name: 1000 * s / merged.requests for name, s in cpu[url].items()}
        measured.append(Measured(merged, per_request))
    return measured


def phase_order(urls: Sequence[str], rounds: int) -> list[str]:
    """The phases' order: ``urls`` as given in even rounds, reversed in odd ones (with two
    URLs: a b b a a b ...), so neither side always goes first."""
    order: list[str] = []
    for round_ in range(rounds):
        order += list(urls) if round_ % 2 == 0 else list(reversed(urls))
    return order


def _cpu(procs: Processes) -> dict[str, float]:
    """CPU seconds so far: each process group of ``procs`` still running, its HAProxy
    part apart (``<name>/haproxy``), and the load tool's (children waited for)."""
    seconds: dict[str, float] = {}
    for name in procs.procs:
        if name in procs.finished:
            continue
        by_command = procs.cpu_seconds_by_command(name)
        seconds[name] = sum(by_command.values())
        if "haproxy" in by_command:
            seconds[f"{name}/haproxy"] = by_command["haproxy"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds["load"] = children.ru_utime + children.ru_stime
    return seconds


def merge_measured(parts: Sequence[Measured]) -> Measured:
    """Phases of one URL measured apart, as one: loads merged, CPU per request weighted
    by each part's requests."""
    load = merge_loads([part.load for part in parts])
    names = {name for part in parts for name in part.cpu_ms_per_request}
    cpu = {
        name: sum(p.cpu_ms_per_request.get(name, 0.0) * p.load.requests for p in parts)
        / load.requests
        for name in names
    }
    return Measured(load, cpu)


def merge_loads(results: list[LoadResult]) -> LoadResult:
    """Counts summed; percentiles and mean averaged, weighted by each phase's requests."""
    total = sum(r.requests for r in results)

    def weighted(values: list[float]) -> float:
        return sum(v * r.requests for v, r in zip(values, results, strict=True)) / total

    return LoadResult(
        requests=total,
        duration_s=sum(r.duration_s for r in results),
        errors=sum(r.errors for r in results),
        non2xx=sum(r.non2xx for r in results),
        p50_ms=weighted([r.p50_ms for r in results]),
        p90_ms=weighted([r.p90_ms for r in results]),
        p99_ms=weighted([r.p99_ms for r in results]),
        mean_ms=weighted([r.mean_ms for r in results]),
        max_ms=max(r.max_ms for r in results),
    )
