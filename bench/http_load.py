"""Driving an HTTP server from a second process: ``wrk`` or a small Python load loop.

Both print one ``LOAD_JSON {...}`` line with the request count, errors and latency
percentiles in microseconds; the paths are ``template % random(1..count)`` (or the
template itself when ``count`` is 0).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

WRK_MISSING = (
    "wrk not found: install it with `apt-get install -y wrk` (Debian/Ubuntu; "
    "`brew install wrk` on macOS), or run with --load-tool python"
)
MARKER = "LOAD_JSON "

WRK_SCRIPT = """
local template, count
init = function(args)
  template = args[1]
  count = tonumber(args[2])
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
request = function()
  local path = template
  if count > 0 then path = string.format(template, math.random(1, count)) end
  return wrk.format("GET", path)
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


class LoadFailed(Exception):
    """The load tool is missing, failed, or reported errors."""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    duration_s: float
    errors: int
    non2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rate_per_s": round(self.rate, 1),
            "errors": self.errors,
            "non2xx": self.non2xx,
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def check_tool(tool: str) -> None:
    if tool == "wrk" and not wrk_available():
        raise LoadFailed(WRK_MISSING)
    if tool not in ("wrk", "python"):
        raise LoadFailed(f"unknown load tool {tool!r}: use wrk or python")


def parse_output(stdout: str) -> LoadResult:
    """The ``LOAD_JSON`` line of a load tool's output."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            return LoadResult(
                requests=int(data["requests"]),
                duration_s=float(data["duration_us"]) / 1e6,
                errors=int(data["errors"]),
                non2xx=int(data["non2xx"]),
                p50_ms=float(data["p50_us"]) / 1000,
                p90_ms=float(data["p90_us"]) / 1000,
                p99_ms=float(data["p99_us"]) / 1000,
                mean_ms=float(data["mean_us"]) / 1000,
                max_ms=float(data["max_us"]) / 1000,
            )
    raise LoadFailed(f"no {MARKER.strip()} line in the load tool's output:\n{stdout[-2000:]}")


def run_load(
    tool: str,
    base_url: str,
    template: str,
    count: int,
    *,
    connections: int,
    duration: float,
    work_dir: Path,
) -> LoadResult:
    """Drive ``base_url`` for ``duration`` seconds over ``connections`` keep-alive
    connections; fails when any request errored or answered other than 2xx/3xx."""
    check_tool(tool)
    if tool == "wrk":
        script = work_dir / "wrk_random_paths.lua"
        script.write_text(WRK_SCRIPT)
        command = [
            "wrk", f"-t{min(connections, 2)}", f"-c{connections}",
            f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script),
            base_url, "--", template, str(count),
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "bench.pyload", base_url, template, str(count),
            "--connections", str(connections), "--duration", str(duration),
        ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if completed.returncode != 0:
        raise LoadFailed(
            f"{command[0]} failed ({completed.returncode}): {completed.stderr[-2000:]}"
        )
    result = parse_output(completed.stdout)
    if result.errors or result.non2xx:
        raise LoadFailed(
            f"{result.errors} request errors and {result.non2xx} non-2xx answers from "
            f"{base_url} ({result.requests} requests)"
        )
    if result.requests == 0:
        raise LoadFailed(f"no request to {base_url} completed")
    return result
