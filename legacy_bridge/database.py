"""Engines for the legacy database."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

SQLITE_BUSY_TIMEOUT_S = 30.0


def make_engine(db: str | Engine) -> tuple[Engine, bool]:
    """Return ``(engine, owned)``: ``db`` itself, or a new engine for a URL (owned)."""
    if isinstance(db, Engine):
        return db, False
    if make_url(db).get_backend_name() == "sqlite":
        engine = create_engine(
            db, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
        )
    else:
        engine = create_engine(db, pool_pre_ping=True)
    return engine, True
