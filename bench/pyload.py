"""A small HTTP load loop, run as its own process when ``wrk`` is not used.

``python -m bench.pyload BASE_URL TEMPLATE COUNT --connections C --duration S`` prints
the same ``LOAD_JSON`` line as the wrk script of :mod:`bench.http_load`. One thread per
keep-alive connection; fine for smoke runs, too slow to saturate a server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
from urllib.parse import urlsplit

from bench.stats import percentile


def _worker(
    host: str,
    port: int,
    template: str,
    count: int,
    deadline: float,
    latencies: list[float],
    failures: list[int],
) -> None:
    rng = random.Random()
    connection = http.client.HTTPConnection(host, port, timeout=10)
    errors = non2xx = 0
    while time.perf_counter() < deadline:
        path = template % rng.randint(1, count) if count > 0 else template
        started = time.perf_counter()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=10)
            continue
        latencies.append(time.perf_counter() - started)
        if not 200 <= response.status < 400:
            non2xx += 1
    connection.close()
    failures.extend([errors, non2xx])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base_url")
    parser.add_argument("template")
    parser.add_argument("count", type=int)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=1.0)
    args = parser.parse_args()
    url = urlsplit(args.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    latencies: list[float] = []
    failures: list[int] = []
    started = time.perf_counter()
    deadline = started + args.duration
    threads = [
        threading.Thread(
            target=_worker,
            args=(host, port, args.template, args.count, deadline, latencies, failures),
        )
        for _ in range(args.connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    micro = [value * 1e6 for value in latencies] or [0.0]
    summary = {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "errors": sum(failures[0::2]),
        "non2xx": sum(failures[1::2]),
        "p50_us": percentile(micro, 50),
        "p90_us": percentile(micro, 90),
        "p99_us": percentile(micro, 99),
        "mean_us": sum(micro) / len(micro),
        "max_us": max(micro),
    }
    print("LOAD_JSON " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
