"""The new system's read API as the facade sees it (a port; ``new_domain`` provides it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol, cast


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


def lag_provider_of(read_model: object) -> LagProvider | None:
    """The read model's ``lag_seconds`` when it has one."""
    lag = getattr(read_model, "lag_seconds", None)
    return cast(LagProvider, lag) if callable(lag) else None


def open_new_read_model(new_db_url: str) -> ReadModel:
    from new_domain import open_read_model

    read_model: ReadModel = open_read_model(new_db_url)
    return read_model


class LazyReadModel:
    """Opens the real read model on first use, so a facade starts (and proxies) without it."""

    def __init__(self, opener: Callable[[], ReadModel]) -> None:
        self._opener = opener
        self._opened: ReadModel | None = None
        self._lock = threading.Lock()

    def allocations_for(self, orderid: str) -> Sequence[AllocationView]:
        return self._get().allocations_for(orderid)

    def lag_seconds(self) -> float | None:
        """The real read model's lag; None while it has no ``lag_seconds``."""
        lag = getattr(self._get(), "lag_seconds", None)
        return None if lag is None else cast("float | None", lag())

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
