"""Commands as an operator meets them, on the local PostgreSQL: ``postgres://`` URLs,
what ``db upgrade`` says it did, and no library log lines unless ``-v``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import postgres_database

pytestmark = [pytest.mark.postgres]

STRANGLER = Path(sys.executable).parent / "strangler"


@pytest.fixture
def pg_db() -> Iterator[str]:
    with postgres_database("strangler_ops") as url:
        yield url


def strangler(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STRANGLER), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_postgres_urls_work_and_db_upgrade_says_what_it_did_without_library_logs(
    pg_db: str,
) -> None:
    url = pg_db.replace("postgresql+psycopg://", "postgres://")

    created = strangler("db", "upgrade", "--new-db-url", url)

    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"new database {url}: schema created (was empty; now at ")
    assert created.stderr == ""  # Alembic's INFO lines stay out
    again = strangler("-v", "db", "upgrade", env={"NEW_DB_URL": url})
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"new database {url} is up to date (revisions ")
    assert "alembic" in again.stderr  # with -v they are shown
    listed = strangler("routes", "list", "--new-db-url", url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("METHOD")


def test_routes_on_an_empty_database_say_it_is_not_migrated(pg_db: str) -> None:
    result = strangler("routes", "list", "--new-db-url", pg_db)

    assert result.returncode == 1
    assert result.stderr == (
        f"strangler: error: the new database {pg_db} is not migrated (no schema revision): "
        "run 'strangler db upgrade'\n"
    )
