"""The new database's schema, managed by the Alembic environment in ``migrations``."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
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
