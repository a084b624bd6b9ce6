"""Writing ``POST /allocate`` from a second process: closed loop (wrk or Python), open loop.

Every request allocates a new order's line (``<prefix>-<thread>-<n>``, never seen before)
of a random product ``SKU-000001`` .. ``SKU-<products>`` (the seeded skus), 1 to 3 units.
Each mode prints the ``LOAD_JSON {...}`` line of :mod:`bench.http_load`; an answer other
than ``201`` counts as non-2xx.

- closed loop: ``connections`` keep-alive connections, each sending its next request as
  soon as the last one was answered, for ``duration`` seconds (wrk, or
  ``python -m bench.write_load closed ...``);
- open loop: ``python -m bench.write_load open ...`` sends request ``i`` at
  ``start + i / rate`` whatever the answers so far, from a pool of ``connections``
  senders; a request's latency runs from its scheduled time (a late send counts in it),
  and ``late`` counts sends more than 10 ms behind their schedule.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.http_load import MARKER, LoadFailed, LoadResult, check_tool, parse_output
from bench.stats import percentile

PATH = "/allocate"
LATE_S = 0.010
HEADERS = {"Content-Type": "application/json"}

WRK_ALLOCATE_SCRIPT = """
local prefix, products, counter
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
init = function(args)
  prefix = args[1]
  products = tonumber(args[2])
  counter = 0
  math.randomseed(os.time() + thread_id * 7919 + math.floor(os.clock() * 1000000))
end
request = function()
  counter = counter + 1
  local body = string.format('{"orderid":"%s-%d-%d","sku":"SKU-%06d","qty":%d}',
    prefix, thread_id, counter, math.random(1, products), math.random(1, 3))
  return wrk.format("POST", "/allocate", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LOAD_JSON {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, "mean_us": %.1f, "max_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class OpenLoopResult:
    """What an open-loop run did: latencies from the scheduled send time."""

    load: LoadResult
    sent: int
    late: int
    rate_achieved: float
    service_p50_ms: float
    service_p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.load.as_dict(),
            "sent": self.sent,
            "late_sends": self.late,
            "rate_achieved_per_s": round(self.rate_achieved, 1),
            "service_p50_ms": round(self.service_p50_ms, 3),
            "service_p99_ms": round(self.service_p99_ms, 3),
        }


def run_closed(
    tool: str,
    base_url: str,
    prefix: str,
    products: int,
    *,
    connections: int,
    duration: float,
    work_dir: Path,
) -> LoadResult:
    """Closed-loop ``POST /allocate`` against ``base_url``; fails when any request errored
    or was not answered ``201``."""
    check_tool(tool)
    if tool == "wrk":
        script = work_dir / "wrk_allocate.lua"
        script.write_text(WRK_ALLOCATE_SCRIPT)
        command = [
            "wrk", f"-t{min(connections, 2)}", f"-c{connections}",
            f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script),
            base_url, "--", prefix, str(products),
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "bench.write_load", "closed", base_url, prefix, str(products),
            "--connections", str(connections), "--duration", str(duration),
        ]  # fmt: skip
    return _checked(_run(command, duration), base_url)


def run_open(
    base_url: str, prefix: str, products: int, *, rate: float, duration: float, connections: int
) -> OpenLoopResult:
    """Open-loop ``POST /allocate`` at ``rate`` per second for ``duration`` seconds."""
    command = [
        sys.executable, "-m", "bench.write_load", "open", base_url, prefix, str(products),
        "--rate", str(rate), "--duration", str(duration), "--connections", str(connections),
    ]  # fmt: skip
    stdout = _run(command, duration)
    load = _checked(stdout, base_url)
    extra = _load_json(stdout)
    return OpenLoopResult(
        load=load,
        sent=int(extra["sent"]),
        late=int(extra["late"]),
        rate_achieved=float(extra["rate_achieved"]),
        service_p50_ms=float(extra["service_p50_us"]) / 1000,
        service_p99_ms=float(extra["service_p99_us"]) / 1000,
    )


def _run(command: list[str], duration: float) -> str:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    if completed.returncode != 0:
        raise LoadFailed(
            f"{command[0]} failed ({completed.returncode}): {completed.stderr[-2000:]}"
        )
    return completed.stdout


def _checked(stdout: str, base_url: str) -> LoadResult:
    result = parse_output(stdout)
    if result.errors or result.non2xx:
        raise LoadFailed(
            f"{result.errors} request errors and {result.non2xx} answers other than 201 from "
            f"{base_url}{PATH} ({result.requests} requests)"
        )
    if result.requests == 0:
        raise LoadFailed(f"no request to {base_url}{PATH} completed")
    return result


def _load_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            data: dict[str, Any] = json.loads(line[len(MARKER) :])
            return data
    raise LoadFailed(f"no {MARKER.strip()} line in the load tool's output:\n{stdout[-2000:]}")


# -- the Python load loops (run as ``python -m bench.write_load``) ---------------------


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    errors: int = 0
    non2xx: int = 0
    late: int = 0
    last_sent: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Sender:
    """One keep-alive connection sending ``POST /allocate`` for new orders."""

    def __init__(self, base_url: str, prefix: str, products: int, number: int) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.prefix = f"{prefix}-{number}"
        self.products = products
        self.rng = random.Random()
        self.count = 0
        self.connection = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def send(self) -> int | None:
        """One request; its status, or None when it failed (the connection is renewed)."""
        self.count += 1
        body = json.dumps(
            {
                "orderid": f"{self.prefix}-{self.count}",
                "sku": f"SKU-{self.rng.randint(1, self.products):06d}",
                "qty": self.rng.randint(1, 3),
            }
        )
        try:
            self.connection.request("POST", PATH, body=body, headers=HEADERS)
            response = self.connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = self._connect()
            return None
        return response.status

    def close(self) -> None:
        self.connection.close()


def _note(tally: _Tally, status: int | None, latency: float, service: float) -> None:
    with tally.lock:
        if status is None:
            tally.errors += 1
            return
        tally.latencies.append(latency)
        tally.service.append(service)
        if status != 201:
            tally.non2xx += 1


def _closed(sender: _Sender, deadline: float, tally: _Tally) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        status = sender.send()
        elapsed = time.perf_counter() - started
        _note(tally, status, elapsed, elapsed)
    sender.close()


class _Schedule:
    """Request ``i`` is due at ``start + i / rate``; senders take the next one."""

    def __init__(self, rate: float, total: int) -> None:
        self.rate = rate
        self.total = total
        self.start = time.perf_counter() + 0.05
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> float | None:
        with self._lock:
            if self._next >= self.total:
                return None
            due = self.start + self._next / self.rate
            self._next += 1
        return due


def _open(sender: _Sender, schedule: _Schedule, tally: _Tally) -> None:
    while (due := schedule.take()) is not None:
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        sent = time.perf_counter()
        with tally.lock:
            tally.late += sent - due > LATE_S
            tally.last_sent = max(tally.last_sent, sent)
        status = sender.send()
        done = time.perf_counter()
        _note(tally, status, done - due, done - sent)
    sender.close()


def _summary(tally: _Tally, elapsed: float) -> dict[str, Any]:
    micro = [value * 1e6 for value in tally.latencies] or [0.0]
    service = [value * 1e6 for value in tally.service] or [0.0]
    return {
        "requests": len(tally.latencies),
        "duration_us": int(elapsed * 1e6),
        "errors": tally.errors,
        "non2xx": tally.non2xx,
        "p50_us": percentile(micro, 50),
        "p90_us": percentile(micro, 90),
        "p99_us": percentile(micro, 99),
        "mean_us": sum(micro) / len(micro),
        "max_us": max(micro),
        "service_p50_us": percentile(service, 50),
        "service_p99_us": percentile(service, 99),
        "late": tally.late,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("closed", "open"))
    parser.add_argument("base_url")
    parser.add_argument("prefix")
    parser.add_argument("products", type=int)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=100.0, help="open loop: requests/s")
    args = parser.parse_args(argv)
    tally = _Tally()
    senders = [
        _Sender(args.base_url, args.prefix, args.products, n) for n in range(args.connections)
    ]
    started = time.perf_counter()
    if args.mode == "closed":
        deadline = started + args.duration
        threads = [threading.Thread(target=_closed, args=(s, deadline, tally)) for s in senders]
    else:
        schedule = _Schedule(args.rate, max(1, round(args.rate * args.duration)))
        threads = [threading.Thread(target=_open, args=(s, schedule, tally)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    summary = _summary(tally, elapsed)
    summary["sent"] = sent = len(tally.latencies) + tally.errors
    if args.mode == "open" and sent > 1:
        summary["rate_achieved"] = (sent - 1) / max(tally.last_sent - schedule.start, 1e-6)
    else:
        summary["rate_achieved"] = sent / elapsed if elapsed else 0.0
    print(MARKER + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
