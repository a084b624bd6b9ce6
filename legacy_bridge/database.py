"""Engines for the legacy database.

MariaDB/MySQL sessions default to REPEATABLE READ; the bridge's connections use READ
COMMITTED there, so a claim reads what is committed now and range reads take no gap locks
(see :mod:`legacy_bridge.capture_mariadb`).
"""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

SQLITE_BUSY_TIMEOUT_S = 30.0
MARIADB_ISOLATION = "READ COMMITTED"


def make_engine(db: str | Engine) -> tuple[Engine, bool]:
    """Return ``(engine, owned)``: ``db`` itself, or a new engine for a URL (owned).

    A MariaDB engine passed in is wrapped to use READ COMMITTED (sharing its pool).
    """
    if isinstance(db, Engine):
        if db.dialect.name in ("mysql", "mariadb"):
            return db.execution_options(isolation_level=MARIADB_ISOLATION), False
        return db, False
    backend = make_url(db).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            db, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
        )
    elif backend in ("mysql", "mariadb"):
        engine = create_engine(
            db, pool_pre_ping=True, isolation_level=MARIADB_ISOLATION, pool_recycle=3600
        )
    else:
        engine = create_engine(db, pool_pre_ping=True)
    return engine, True
