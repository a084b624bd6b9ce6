"""Starting the kit's processes the way a deployment runs them (``strangler ...``)."""

from __future__ import annotations

import time

import requests

from bench.context import Context
from bench.processes import Processes, wait_for
from bench.report import Result
from bench.services import queue_exists


def kit_env(ctx: Context, legacy_url: str, new_url: str | None = None) -> dict[str, str]:
    env = {"LEGACY_DB_URL": legacy_url, "BROKER_URL": ctx.services.amqp_url}
    if new_url is not None:
        env["NEW_DB_URL"] = new_url
    return env


def start_consumer(
    procs: Processes, ctx: Context, queue: str, exchange: str, *options: str
) -> None:
    """``strangler consume`` on ``queue`` bound to ``exchange`` (with ``options``); returns
    once the queue exists (so nothing the bridge publishes afterwards is unroutable)."""
    procs.strangler(
        "consumer", "consume", "--queue", queue, "--exchange", exchange, *options,
        *ctx.consumer_args, profile=True,
    )  # fmt: skip

    def ready() -> bool:
        procs.check_running("consumer")
        return queue_exists(ctx.services.amqp_url, queue)

    wait_for(ready, 60, f"the consumer to declare queue {queue}", interval=0.1)


def start_bridge(procs: Processes, ctx: Context, exchange: str, *options: str) -> float:
    """``strangler bridge run`` publishing to ``exchange`` (with ``options``, e.g. the
    engine's); the monotonic start time."""
    started = time.perf_counter()
    procs.strangler(
        "bridge", "bridge", "run", "--exchange", exchange, *options, *ctx.bridge_args,
        profile=True,
    )  # fmt: skip
    return started


def wait_http(procs: Processes, name: str, url: str, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200 (the server ``name`` must keep running)."""

    def ok() -> bool:
        procs.check_running(name)
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ok, timeout, f"{name} to answer {url}", interval=0.1)


def note_disturbances(result: Result, procs: Processes, *names: str) -> None:
    """Record the warnings and errors the kit's processes logged; a run in which, say,
    the broker connection was lost says so next to its figures."""
    problems = {name: procs.log_problems(name) for name in names}
    result.details["logged_problems"] = {
        name: {"count": len(lines), "first": lines[:3]} for name, lines in problems.items()
    }
    count = sum(len(lines) for lines in problems.values())
    if count:
        who = ", ".join(f"{name} {len(lines)}" for name, lines in problems.items() if lines)
        note = (
            f"disturbed: the kit logged {count} warnings/errors during the run ({who}); "
            "see details.logged_problems"
        )
        result.note = f"{result.note}\n{note}".strip()
