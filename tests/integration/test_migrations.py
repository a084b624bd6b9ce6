"""The Alembic migrations build exactly the schema the ORM maps."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from new_domain import upgrade_database
from new_domain.adapters import orm
from new_domain.adapters.schema import pending_revisions

OWN_TABLES = {t.name for t in orm.metadata.sorted_tables}


def schema_differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_object": _own}
            )
            return list(compare_metadata(context, orm.metadata))
    finally:
        engine.dispose()


def _own(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    return not (type_ == "table" and reflected and compare_to is None)


def check_upgrade_from_empty(url: str) -> None:
    current, heads = pending_revisions(url)
    assert current == set()
    upgrade_database(url)
    current, heads = pending_revisions(url)
    assert current == heads
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) >= OWN_TABLES
    finally:
        engine.dispose()
    assert schema_differences(url) == []
    upgrade_database(url)  # a second upgrade is a no-op
    assert pending_revisions(url)[0] == heads


@pytest.mark.postgres
def test_postgresql_upgrade_from_empty_matches_the_model(pg_url: str) -> None:
    check_upgrade_from_empty(pg_url)


def test_sqlite_upgrade_from_empty_matches_the_model(tmp_path: Path) -> None:
    check_upgrade_from_empty(f"sqlite:///{tmp_path / 'new.db'}")


def test_the_initial_revision_is_the_new_domain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(url, "0001_new_domain")
    assert pending_revisions(url)[0] == {"0001_new_domain"}
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == OWN_TABLES | {"alembic_version"}
    finally:
        engine.dispose()
