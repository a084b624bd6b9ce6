"""``python -m legacy_bridge <command>``: the ``bridge`` commands without the kit's CLI."""

from __future__ import annotations

import logging

from legacy_bridge.cli import bridge


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    bridge(prog_name="python -m legacy_bridge")


if __name__ == "__main__":
    main()
