"""``python -m bench.markdown [RESULTS_DIR]``: the results as Markdown, for docs/benchmarks.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.report import HEADER, met_text, number, render_markdown
from bench.suite import BENCHMARKS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = []
    for f in result["figures"]:
        baseline = number(f["baseline"], f["unit"])
        if f["baseline_name"] and f["baseline"] is not None:
            baseline = f"{baseline} ({f['baseline_name']})"
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}"
        met = met_text(f["met"])
        table.append(
            (
                f["figure"],
                number(f["value"], f["unit"]),
                baseline,
                ratio,
                f["target_text"] or "-",
                f"**{met}**" if met == "NO" else met,
            )
        )
    return table


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['nproc']} cores ({machine['cpu']}), {machine['memory_gib']} GiB RAM, "
        f"Linux {machine['kernel']}, Python {machine['python']}, PostgreSQL "
        f"{machine['postgresql']}, RabbitMQ {machine['rabbitmq']}, pika {machine['pika']}; "
        f"code {machine['code']}; {machine['date']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else RESULTS_DIR
    printed_machine = False
    for benchmark in BENCHMARKS:
        path = directory / f"{benchmark.name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        if not printed_machine:
            print(f"Machine: {machine_line(result['machine'])}\n")
            printed_machine = True
        load = result["details"].get("load_average_1min_before_after")
        load_text = f", load average {load[0]} -> {load[1]}" if load else ""
        print(f"#### {benchmark.name} (size {result['size']:,} {benchmark.size_unit}{load_text})\n")
        if result["status"] != "ok":
            print(f"{result['note']}\n")
            continue
        print(render_markdown(rows(result), HEADER))
        if result["note"]:
            print("\n" + "\n".join(f"> {line}" for line in result["note"].splitlines()))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
