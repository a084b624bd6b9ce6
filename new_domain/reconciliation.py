"""Reconciliation: does the new system answer every order like legacy does?

For each order, legacy's answer is what its users get: ``GET <legacy>/allocations/<id>``
over HTTP (a small thread pool, one ``requests`` session per thread). The new
system's answer is the read model's, in the same shape the facade serves: 200 with
``[{"sku", "batchref"}, ...]`` or 404 ``{"error": "not found", ...}``. Orders are
enumerated from both sides: the read model's and, read-only, the legacy database's.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from new_domain.views import ReadModel

DEFAULT_LEGACY_ORDERS_SQL = "SELECT DISTINCT order_no FROM cust_order_line"
MATCH, DIFFER, ONLY_LEGACY, ONLY_NEW, ERROR, UNASKED = (
    "match",
    "differ",
    "only_legacy",
    "only_new",
    "error",
    "legacy_unreachable",
)
"""Outcomes of one order; ``legacy_unreachable``: legacy could not be asked (connection
refused, timeout ...), so nothing is known about the order."""

Answer = tuple[int, Any]
"""HTTP status and JSON body."""


@dataclass(frozen=True)
class Comparison:
    orderid: str
    outcome: str
    legacy: Answer
    new: Answer

    def explain(self) -> str:
        """The difference, readably."""
        if self.outcome == UNASKED:
            return f"legacy could not be asked: {self.legacy[1]}"
        if self.outcome == ERROR:
            return f"legacy answered {self.legacy[0]}: {self.legacy[1]}"
        if self.outcome in (ONLY_LEGACY, ONLY_NEW):
            side = "legacy" if self.outcome == ONLY_LEGACY else "the new system"
            body = self.legacy[1] if self.outcome == ONLY_LEGACY else self.new[1]
            return f"allocated only in {side}: {body}"
        from deepdiff import DeepDiff  # slow to import; only needed for differences

        diff = DeepDiff(self.legacy[1], self.new[1], verbose_level=2)
        return diff.pretty().replace("\n", "; ") or f"{self.legacy} != {self.new}"


@dataclass
class Report:
    checked: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    differences: list[Comparison] = field(default_factory=list)
    unasked_reason: str | None = None
    """Why legacy could not be asked, for the first order it could not be asked about."""

    @property
    def matching(self) -> int:
        return self.counts.get(MATCH, 0)

    @property
    def ok(self) -> bool:
        return self.checked == self.matching

    def summary(self) -> str:
        c = self.counts
        return (
            f"checked {self.checked} orders: {c.get(MATCH, 0)} matching,"
            f" {c.get(DIFFER, 0)} differing, {c.get(ONLY_LEGACY, 0)} only in legacy,"
            f" {c.get(ONLY_NEW, 0)} only in the new system, {c.get(ERROR, 0)} errors"
            + (f", {c[UNASKED]} not asked (legacy unreachable)" if c.get(UNASKED) else "")
        )

    @property
    def unasked(self) -> int:
        """Orders legacy could not be asked about."""
        return self.counts.get(UNASKED, 0)


def legacy_orderids(legacy_db_url: str, sql: str = DEFAULT_LEGACY_ORDERS_SQL) -> set[str]:
    """The order ids ``sql`` (first column) returns from the legacy database, in a
    read-only session that is rolled back."""
    engine = create_engine(legacy_db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            dialect = connection.dialect.name
            if dialect == "sqlite":
                connection.exec_driver_sql("PRAGMA query_only = ON")
            elif dialect == "postgresql":
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            elif dialect in ("mysql", "mariadb"):
                connection.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
            ids = {str(value) for value in connection.execute(text(sql)).scalars() if value}
            connection.rollback()
            return ids
    finally:
        engine.dispose()


def choose(orderids: Collection[str], sample: int | None, seed: int | None = None) -> list[str]:
    """All order ids sorted, or a random sample of ``sample`` of them."""
    ordered = sorted(orderids)
    if sample is None or sample >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, sample))


def new_answers(read_model: ReadModel, orderids: Collection[str]) -> dict[str, Answer]:
    """The new system's answer for each order, as the facade would serve it."""
    found = read_model.allocations_by_order(orderids)
    answers: dict[str, Answer] = {}
    for orderid in orderids:
        allocations = found.get(orderid)
        if allocations:
            answers[orderid] = (200, [{"sku": a.sku, "batchref": a.batchref} for a in allocations])
        else:
            answers[orderid] = (
                404,
                {"error": "not found", "detail": f"no allocations for order {orderid}"},
            )
    return answers


class LegacyClient:
    """``GET <legacy_url>/allocations/<orderid>`` from a pool of threads."""

    def __init__(self, legacy_url: str, workers: int = 8, timeout: float = 10.0) -> None:
        self.legacy_url = legacy_url.rstrip("/")
        self.workers = workers
        self.timeout = timeout
        self._local = threading.local()

    def answers(self, orderids: Iterable[str]) -> dict[str, Answer]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="verify") as pool:
            return dict(pool.map(self._answer, orderids))

    def _answer(self, orderid: str) -> tuple[str, Answer]:
        url = f"{self.legacy_url}/allocations/{quote(orderid, safe='')}"
        try:
            response = self._session().get(url, timeout=self.timeout)
        except requests.RequestException as error:
            return orderid, (0, f"{type(error).__name__}: {error}")
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text[:200]
        return orderid, (response.status_code, body)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_maxsize=self.workers))
            session.mount("https://", HTTPAdapter(pool_maxsize=self.workers))
            self._local.session = session
        return session


def compare(orderid: str, legacy: Answer, new: Answer) -> Comparison:
    if legacy[0] == 0:
        outcome = UNASKED
    elif legacy == new:
        outcome = MATCH
    elif legacy[0] not in (200, 404):
        outcome = ERROR
    elif legacy[0] == 404 and new[0] == 200:
        outcome = ONLY_NEW
    elif legacy[0] == 200 and new[0] == 404:
        outcome = ONLY_LEGACY
    else:
        outcome = DIFFER
    return Comparison(orderid, outcome, legacy, new)


def reconcile(
    orderids: Collection[str],
    legacy: Callable[[Iterable[str]], dict[str, Answer]],
    new: Callable[[Collection[str]], dict[str, Answer]],
    keep: int = 10,
) -> Report:
    """Compare both systems' answers for ``orderids``; the first ``keep`` differences
    are kept in the report."""
    report = Report()
    legacy_answers = legacy(orderids)
    new_answers_ = new(orderids)
    for orderid in orderids:
        result = compare(orderid, legacy_answers[orderid], new_answers_[orderid])
        report.checked += 1
        report.counts[result.outcome] = report.counts.get(result.outcome, 0) + 1
        if result.outcome == UNASKED and report.unasked_reason is None:
            report.unasked_reason = str(result.legacy[1])
        if result.outcome != MATCH and len(report.differences) < keep:
            report.differences.append(result)
    return report
