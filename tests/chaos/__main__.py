"""``python -m tests.chaos [--long] [--sharded] [--seed N]``: one chaos run, summary printed as JSON
and as a Markdown table; exits non-zero when the run broke a promise."""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from tests.chaos.harness import BOUNDED, LONG, run, sharded
from tests.chaos.report import assert_clean, markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument(
        "--long", action="store_true", help="100,000+ changes, 36 process kills, 4 broker restarts"
    )
    parser.add_argument(
        "--sharded",
        action="store_true",
        help="on the local 3-node RabbitMQ cluster, with the shard router and 3 consumers on"
        " 4 shards; broker restarts stop one node",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--changes", type=int, default=None, help="override the size")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="logs and summary.json (default: a new temporary folder)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    config = replace(LONG if args.long else BOUNDED, seed=seed)
    if args.sharded:
        config = sharded(config)
    if args.changes is not None:
        config = replace(config, changes=args.changes)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    summary = run(config, workdir)
    table = markdown(summary)
    (workdir / "summary.md").write_text(table + "\n")
    print(table)
    try:
        assert_clean(summary)
    except AssertionError as failure:
        print(f"chaos run FAILED (seed {seed}): {failure}", file=sys.stderr)
        return 1
    print(f"chaos run passed (seed {seed}); summary in {workdir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
