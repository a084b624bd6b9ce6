"""The legacy shop and the facade under gunicorn, and load phases against them."""

from __future__ import annotations

from dataclasses import dataclass

from bench.context import Context
from bench.http_load import LoadResult, run_load
from bench.kit import wait_http
from bench.processes import Processes, free_port

WORKERS = 2
"""gunicorn workers of both servers (the machine class has 2 cores)."""


@dataclass(frozen=True)
class Servers:
    legacy: str
    facade: str


def start_servers(procs: Processes, legacy_db_url: str, new_db_url: str, probe: str) -> Servers:
    """``strangler legacy serve`` and ``strangler serve`` in front of it, both with
    ``WORKERS`` workers and their default threads; waits until ``probe`` answers 200
    through each."""
    legacy_port, facade_port = free_port(), free_port()
    legacy = f"http://127.0.0.1:{legacy_port}"
    facade = f"http://127.0.0.1:{facade_port}"
    procs.strangler(
        "legacy", "legacy", "serve", "--port", str(legacy_port), "--workers", str(WORKERS),
        "--legacy-db-url", legacy_db_url,
    )  # fmt: skip
    wait_http(procs, "legacy", legacy + probe)
    procs.strangler(
        "facade", "serve", "--port", str(facade_port), "--workers", str(WORKERS),
        "--legacy-url", legacy, "--new-db-url", new_db_url,
    )  # fmt: skip
    wait_http(procs, "facade", facade + probe)
    return Servers(legacy, facade)


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
    """Load ``first`` and ``second`` alternately, ``rounds`` phases each (default 2, 1 in
    a smoke run) of ``duration / rounds`` seconds, so drift hits both alike; results
    merged per URL, with the CPU time the servers (``legacy``, ``facade``) spent."""
    if rounds is None:
        rounds = 1 if ctx.smoke else 2
    servers = ("legacy", "facade")
    results: dict[str, list[LoadResult]] = {first: [], second: []}
    cpu: dict[str, dict[str, float]] = {url: dict.fromkeys(servers, 0.0) for url in results}
    for round_ in range(rounds):
        order = (first, second) if round_ % 2 == 0 else (second, first)
        for url in order:
            before = {name: procs.cpu_seconds(name) for name in servers}
            results[url].append(
                run_load(
                    ctx.load_tool,
                    url,
                    template,
                    count,
                    connections=connections,
                    duration=duration / rounds,
                    work_dir=procs.logs,
                )  # fmt: skip
            )
            for name in servers:
                cpu[url][name] += procs.cpu_seconds(name) - before[name]
    measured = []
    for url in (first, second):
        merged = _merge(results[url])
        per_request = {name: 1000 * cpu[url][name] / merged.requests for name in servers}
        measured.append(Measured(merged, per_request))
    return measured[0], measured[1]


def _merge(results: list[LoadResult]) -> LoadResult:
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
