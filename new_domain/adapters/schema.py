"""The new database's schema, managed by the Alembic environment in ``migrations``."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

MIGRATIONS_PACKAGE = "migrations"
"""The Alembic environment, found by its package name: it imports this package's metadata
(``new_domain.metadata``), so this package does not import it."""


def alembic_config(new_db_url: str) -> Config:
    """An Alembic configuration for ``new_db_url`` (no ini file needed, works installed)."""
    config = Config()
    config.set_main_option("script_location", str(files(MIGRATIONS_PACKAGE)))
    config.set_main_option("sqlalchemy.url", new_db_url.replace("%", "%%"))
    return config


def upgrade_database(new_db_url: str, revision: str = "heads") -> None:
    """Run ``alembic upgrade`` (to every head by default) on the new database."""
    command.upgrade(alembic_config(new_db_url), revision)


def pending_revisions(new_db_url: str) -> tuple[set[str], set[str]]:
    """``(current, heads)`` revisions of the database and of the migration scripts."""
    config = alembic_config(new_db_url)
    heads = set(ScriptDirectory.from_config(config).get_heads())
    engine = create_engine(new_db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    return current, heads


@lru_cache(maxsize=1)
def schema_heads() -> frozenset[str]:
    """The head revisions of the migration scripts (read once per process)."""
    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def schema_problem(connection: Connection) -> str | None:
    """Why the database behind ``connection`` is not at every head revision (None: it
    is): ``not migrated`` when it has no revision at all, else the revisions it is at."""
    current = set(MigrationContext.configure(connection).get_current_heads())
    heads = schema_heads()
    if heads <= current:
        return None
    if not current:
        return "not migrated (no schema revision): run 'strangler db upgrade'"
    return (
        f"not migrated to the latest revision (at {', '.join(sorted(current))}): "
        "run 'strangler db upgrade'"
    )
