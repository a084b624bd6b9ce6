"""The ``strangler`` command: one entry point wiring every package's commands.

Each package owns its commands (``legacy``, ``bridge``, ``db``, ``consume``, ``serve``,
``routes``, ``demo``) and names them in its public API; this module only assembles them
and turns failures into one clear line and a non-zero exit.
"""

from __future__ import annotations

import logging
import sys

import click

from examples.legacy_shop import legacy_cli
from legacy_bridge import bridge_cli
from new_domain import CLI_COMMANDS
from skeleton_app.commands import routes, serve
from skeleton_app.composition.demo import demo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def cli(verbose: bool) -> None:
    """Strangler-fig migration kit: capture legacy changes, build the new domain, move routes."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # pika logs every failed connection attempt at ERROR with a traceback; the
        # bridge and the consumer log one WARNING line per attempt with the cause
        logging.getLogger("pika").setLevel(logging.CRITICAL)


for command in (legacy_cli, bridge_cli, *CLI_COMMANDS, serve, routes, demo):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("strangler: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"strangler: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        logging.getLogger("strangler").debug("failure", exc_info=True)
        click.echo(f"strangler: error: {type(exc).__name__}: {exc}".splitlines()[0], err=True)
        sys.exit(1)
