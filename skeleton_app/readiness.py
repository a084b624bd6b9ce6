"""``/_strangler/ready``: whether the facade can do what its route table says.

``/_strangler/health`` stays a liveness check (the process answers). Readiness says what is
degraded, with 503 while anything is: the new database unreachable or not migrated (every
route then falls back to legacy), or the route table not read for a while (the facade
serves by stale routes, or by legacy alone when it never read them).
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from sqlalchemy.exc import SQLAlchemyError

from new_domain import schema_problem
from skeleton_app.errors import printable
from skeleton_app.facade import Facade

STALE_AFTER_MIN_S = 5.0
"""The route table is stale when unread for 3 refresh intervals, and never before this."""


def stale_after(refresh_interval: float) -> float:
    return max(3 * refresh_interval, STALE_AFTER_MIN_S)


def readiness(facade: Facade) -> Response:
    checks = {"new_database": _new_database(facade), "route_table": _route_table(facade)}
    ready = all(check["ok"] for check in checks.values())
    response = jsonify({"status": "ready" if ready else "degraded", "checks": checks})
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def _new_database(facade: Facade) -> dict[str, Any]:
    try:
        with facade.table.engine.connect() as conn:
            problem = schema_problem(conn)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        detail = reason[0] if reason else type(exc).__name__
        return {"ok": False, "detail": f"unreachable: {printable(detail, limit=300)}"}
    if problem is not None:
        return {"ok": False, "detail": problem}
    return {"ok": True, "detail": "reachable and migrated"}


def _route_table(facade: Facade) -> dict[str, Any]:
    limit = stale_after(facade.table.refresh_interval)
    age = facade.table.staleness()
    if age is None:
        return {
            "ok": False,
            "age_seconds": None,
            "detail": "never read: every route is served by legacy",
        }
    if age > limit:
        return {
            "ok": False,
            "age_seconds": round(age, 3),
            "detail": f"stale: last read {age:.0f} s ago (limit {limit:g} s)",
        }
    return {"ok": True, "age_seconds": round(age, 3), "detail": "fresh"}
