"""The new system's read API as the facade sees it (a port; ``new_domain`` provides it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast


class AllocationView(Protocol):
    @property
    def sku(self) -> str: ...

    @property
    def batchref(self) -> str: ...


LagProvider = Callable[[], float | None]
"""End-to-end lag in seconds (how far the read model is behind legacy); None if unknown."""


class ReadModel(Protocol):
    """What ``new_domain.open_read_model(url)`` returns (``lag_seconds()`` when it has it)."""

    def allocations_for(self, orderid: str) -> Sequence[AllocationView]: ...

    def close(self) -> None: ...


def decision_parity_of(read_model: object) -> dict[str, dict[str, Any]]:
    """The write routes' decision parity as the read model reports it (``agree``,
    ``differ``, ``samples``, ``percent`` per route; ``unclassified`` last); empty when it
    reports none."""
    parity = getattr(read_model, "decision_parity", None)
    counts: Mapping[str, Any] = {} if parity is None else parity()
    return {
        route: {
            "agree": c.agree,
            "differ": c.differ,
            "samples": c.samples,
            "percent": round(100.0 * c.agree / c.samples, 4) if c.samples else 0.0,
        }
        for route, c in sorted(
            counts.items(), key=lambda item: (item[0] == "unclassified", item[0])
        )
    }


def time_limit_of(read_model: object) -> float | None:
    """The seconds after which ``read_model`` itself gives up a read (raising a
    ``TimeoutError``), or None when nothing but the caller can bound it."""
    limit = getattr(read_model, "time_limit", None)
    return float(limit) if isinstance(limit, int | float) and limit > 0 else None


def lag_provider_of(read_model: object) -> LagProvider | None:
    """The read model's ``lag_seconds`` when it has one."""
    lag = getattr(read_model, "lag_seconds", None)
    return cast(LagProvider, lag) if callable(lag) else None


def open_new_read_model(new_db_url: str, time_limit: float | None = None) -> ReadModel:
    from new_domain import open_read_model

    read_model: ReadModel = open_read_model(new_db_url, time_limit=time_limit)
    return read_model


def bounds_reads(new_db_url: str) -> bool:
    """Whether ``new_domain``'s read model on this database enforces a ``time_limit``
    (PostgreSQL: the connection's statement timeout), known without connecting."""
    from sqlalchemy.engine import make_url

    return make_url(new_db_url).get_backend_name() == "postgresql"


class LazyReadModel:
    """Opens the real read model on first use, so a facade starts (and proxies) without it.

    ``time_limit`` is what the opened read model will enforce (see :func:`time_limit_of`).
    """

    def __init__(self, opener: Callable[[], ReadModel], time_limit: float | None = None) -> None:
        self._opener = opener
        self._opened: ReadModel | None = None
        self._lock = threading.Lock()
        self.time_limit = time_limit

    def allocations_for(self, orderid: str) -> Sequence[AllocationView]:
        return self._get().allocations_for(orderid)

    def lag_seconds(self) -> float | None:
        """The real read model's lag; None while it has no ``lag_seconds``."""
        lag = getattr(self._get(), "lag_seconds", None)
        return None if lag is None else cast("float | None", lag())

    def decision_parity(self) -> Mapping[str, Any]:
        """The real read model's decision parity per write route; empty while it has none."""
        parity = getattr(self._get(), "decision_parity", None)
        return {} if parity is None else cast("Mapping[str, Any]", parity())

    def close(self) -> None:
        with self._lock:
            if self._opened is not None:
                self._opened.close()
                self._opened = None

    def _get(self) -> ReadModel:
        opened = self._opened
        if opened is None:
            with self._lock:
                if self._opened is None:
                    self._opened = self._opener()
                opened = self._opened
        return opened
