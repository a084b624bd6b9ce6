"""``python -m bench [NAME ...]``: run benchmarks, print their tables, write their JSON.

Exit status 0 when every benchmark produced its figures (targets met or not; "not
available" counts as produced), 1 when one failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.context import Context, split_args
from bench.http_load import LoadFailed, check_tool
from bench.machine import describe
from bench.processes import BenchmarkFailed
from bench.report import Result, render, write_json
from bench.services import Services
from bench.suite import BENCHMARKS, BY_NAME, Benchmark

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HTTP_BENCHMARKS = {"facade_overhead", "read_path", "write_path"}


def _parser() -> argparse.ArgumentParser:
    names = ", ".join(b.name for b in BENCHMARKS)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the strangler kit's benchmarks (all of them by default).",
        epilog=f"Benchmarks: {names}. Services: BENCH_PG_HOST, BENCH_PG_PORT, "
        "BENCH_PG_USER, BENCH_AMQP_URL (default: local PostgreSQL as postgres, local "
        "RabbitMQ as guest); BENCH_PG_LOGICAL_PORT (default 5433): the wal_level=logical "
        "cluster of capture_overhead and lag (started by deploy/postgres/logical-cluster.sh "
        "when it does not answer).",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, short phases")
    parser.add_argument("--size", type=int, help="size of each benchmark run (see --list)")
    parser.add_argument("--list", action="store_true", help="list benchmarks and sizes")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--load-tool",
        choices=("wrk", "python"),
        default="wrk",
        help="HTTP load generator (default wrk)",
    )
    parser.add_argument(
        "--profile-dir", type=Path, help="run bridge and consumer under pyinstrument, reports here"
    )
    parser.add_argument("--bridge-args", help="extra options for `strangler bridge run`")
    parser.add_argument("--consumer-args", help="extra options for `strangler consume`")
    parser.add_argument(
        "--rate",
        type=int,
        help="lag: changes per second (default 1000); write_path: writes per second (200)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the processes' logs (their folder is printed)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for b in BENCHMARKS:
            print(
                f"{b.name:22} full {b.full_size:>9,}  smoke {b.smoke_size:>6,}  "
                f"({b.size_unit}) {b.title}"
            )
        return 0
    unknown = [name for name in args.names if name not in BY_NAME]
    if unknown:
        print(
            f"bench: error: unknown benchmark {', '.join(unknown)} (known: {', '.join(BY_NAME)})",
            file=sys.stderr,
        )
        return 2
    selected = [BY_NAME[name] for name in args.names] or list(BENCHMARKS)
    if any(b.name in HTTP_BENCHMARKS for b in selected):
        try:
            check_tool(args.load_tool)
        except LoadFailed as error:
            print(f"bench: error: {error}", file=sys.stderr)
            return 2
    services = Services.from_environment()
    work_dir = Path(tempfile.mkdtemp(prefix="strangler-bench-"))
    ctx = Context(
        services=services,
        work_dir=work_dir,
        smoke=args.smoke,
        load_tool=args.load_tool,
        profile_dir=args.profile_dir,
        bridge_args=split_args(args.bridge_args),
        consumer_args=split_args(args.consumer_args),
        rate=args.rate,
    )
    machine = describe(services)
    print(
        f"machine: {machine['nproc']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"PostgreSQL {machine['postgresql']}, RabbitMQ {machine['rabbitmq']}, "
        f"code {machine['code']}"
    )
    failed = 0
    for benchmark in selected:
        size = args.size or (benchmark.smoke_size if args.smoke else benchmark.full_size)
        result = _run_one(benchmark, ctx, size)
        result.machine = machine
        path = write_json(result, args.results_dir)
        print(render(result))
        print(f"-> {path}\n", flush=True)
        failed += result.status == "error"
    if args.keep_logs or failed:
        print(f"process logs: {work_dir}")
    else:
        _remove_tree(work_dir)
    return 1 if failed else 0


def _run_one(benchmark: Benchmark, ctx: Context, size: int) -> Result:
    print(f"running {benchmark.name} (size {size:,} {benchmark.size_unit}) ...", flush=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        result = benchmark.run(ctx, size)
    except (BenchmarkFailed, LoadFailed) as error:
        result = Result(benchmark.name, size, benchmark.title, "error", str(error))
    except Exception as error:  # noqa: BLE001 - report it, run the next benchmark
        traceback.print_exc()
        result = Result(
            benchmark.name, size, benchmark.title, "error", f"{type(error).__name__}: {error}"
        )
    result.started_at = started_at
    result.duration_s = time.perf_counter() - started
    # other work on the machine skews the figures: keep the load average with them
    result.details["load_average_1min_before_after"] = [
        round(load_before[0], 2),
        round(os.getloadavg()[0], 2),
    ]
    return result


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
