"""The ``strangler`` command: one entry point wiring every package's commands.

Each package owns its commands (``legacy``, ``bridge``, ``db``, ``consume``, ``backsync``,
``serve``, ``routes``, ``demo``) and names them in its public API; this module only assembles them
and turns failures into one clear line and a non-zero exit.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys

import click
from sqlalchemy.dialects import registry

from backsync import backsync_cli
from examples.legacy_shop import legacy_cli
from legacy_bridge import bridge_cli
from new_domain import CLI_COMMANDS, WritePath
from skeleton_app.commands import OPERATIONS, WRITE_PATH, routes, serve
from skeleton_app.composition.console import open_operations
from skeleton_app.composition.demo import demo
from skeleton_app.composition.status_line import status_with_backsync
from skeleton_app.composition.verify_databases import verify_with_databases


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def cli(verbose: bool) -> None:
    """Strangler-fig migration kit: capture legacy changes, build the new domain, move routes."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # strangler serve: each facade worker opens the new system's write path on NEW_DB_URL
    click.get_current_context().meta[WRITE_PATH] = open_write_path
    # strangler serve: the console's view of the pipeline (bridge, queue, dead letters)
    click.get_current_context().meta[OPERATIONS] = open_operations
    if not verbose:
        # pika logs every failed connection attempt at ERROR with a traceback; the
        # bridge and the consumer log one WARNING line per attempt with the cause
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        # libraries' INFO lines (Alembic's "Context impl", "Running upgrade ...") are
        # not the command's own: shown with -v only
        for library in QUIET_LIBRARIES:
            logging.getLogger(library).setLevel(logging.WARNING)
    accept_postgres_scheme()


QUIET_LIBRARIES = ("alembic", "sqlalchemy", "urllib3", "werkzeug")
"""Libraries logged at WARNING and above unless ``-v``."""


def accept_postgres_scheme() -> None:
    """``postgres://`` (Heroku's, libpq's and many platforms' spelling) means PostgreSQL
    through psycopg, as ``postgresql://`` does, in every command of this process."""
    for name in ("postgres", "postgres.psycopg"):
        registry.register(name, "sqlalchemy.dialects.postgresql.psycopg", "PGDialect_psycopg")


def open_write_path(new_db_url: str) -> WritePath:
    """The new system's write path for the facade (write group ``allocation``)."""
    return WritePath(new_db_url)


for command in (legacy_cli, bridge_cli, *CLI_COMMANDS, backsync_cli, serve, routes, demo):
    cli.add_command(command)
# the new domain's verify and status, with what only the composition root can add: the
# legacy and new databases compared directly, back-sync's line
cli.add_command(verify_with_databases(cli.commands["verify"]))
cli.add_command(status_with_backsync(cli.commands["status"]))


def main() -> None:
    # `kill -USR1 <pid>`: every thread's stack to stderr (the process's log), and the
    # process goes on; for a process that does not stop or seems stuck (README)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
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
