"""Fakes the facade's unit tests share (this module holds no tests)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine
from werkzeug.test import TestResponse

import new_domain
from new_domain import Ownership, QuantityChanged
from skeleton_app import facade_of
from skeleton_app import metadata as facade_metadata

LEGACY = "http://legacy.test:8080"
ROUTE = "/allocations/<orderid>"


def create_new_database(engine: Engine) -> None:
    """The new database's tables the facade reads: the route table, shadow results, and
    the new domain's (write ownership, decision parity ...)."""
    new_domain.metadata.create_all(engine)
    facade_metadata.create_all(engine)


@dataclass(frozen=True)
class Allocation:
    sku: str
    batchref: str


class FakeReadModel:
    """The new system's read model: answers from a dict, can fail or block on demand."""

    def __init__(self, allocations: dict[str, list[Allocation]] | None = None) -> None:
        self.allocations = allocations or {}
        self.asked: list[str] = []
        self.fail = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def block(self) -> threading.Event:
        """Make calls wait until the returned event is set."""
        self.gate = threading.Event()
        return self.gate

    def allocations_for(self, orderid: str) -> list[Allocation]:
        self.asked.append(orderid)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("read model database is down")
        return list(self.allocations.get(orderid, []))

    def close(self) -> None:
        pass


class Lag:
    """A lag provider whose answer the test sets."""

    def __init__(self, value: float | None = 0.0) -> None:
        self.value = value
        self.error: Exception | None = None

    def __call__(self) -> float | None:
        if self.error is not None:
            raise self.error
        return self.value


def legacy_json(
    body: object, status: int = 200
) -> Callable[..., tuple[int, dict[str, str], bytes]]:
    """A ``responses`` callback answering ``body`` as Flask's jsonify writes it."""
    text = json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n"

    def answer(request: object) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, text.encode()

    return answer


class BufferedClient(FlaskClient):
    """Reads every answer whole, as a real server does (the shadow copy is taken then)."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def drain(app: Flask) -> None:
    # a bound, not a pause: drain returns as soon as the work is written
    assert facade_of(app).shadow.drain(60), "shadow work did not finish"


def metric(app: Flask, name: str, **labels: str) -> float:
    """A sample's value from the app's registry (0 when absent)."""
    registry = facade_of(app).metrics.registry
    assert registry is not None
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class FakeWritePath:
    """The new system's write path: remembers every call, answers what the test set.

    ``refusal`` is raised by the next decisions (a ``DomainError`` or ``NotOwned``);
    ``block()`` makes decisions wait; ``batches`` maps refs to skus for ``PATCH``;
    ``ownership()`` reads the group's ownership where ``stored`` says (legacy's when
    nothing is stored: the route table the test uses)."""

    def __init__(self, stored: Callable[[], Ownership] | None = None) -> None:
        self.stored = stored
        self.calls: list[tuple[Any, ...]] = []
        self.batches: dict[str, str] = {}
        self.refusal: Exception | None = None
        self.batchref = "b-1"
        self.changed: QuantityChanged | None = None
        self.gate: threading.Event | None = None
        self.closed = False
        self.holding = False
        self.hold_gate: threading.Event | None = None  # set: held() waits for it
        self.released = 0  # holds let go
        self.release_error: Exception | None = None  # raised when a hold is let go

    def block(self) -> threading.Event:
        self.gate = threading.Event()
        return self.gate

    @property
    def decisions(self) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] not in ("sku_of_batch", "ownership", "held")]

    def ownership(self) -> Ownership:
        self.calls.append(("ownership",))
        return self.stored() if self.stored is not None else Ownership("allocation")

    @contextmanager
    def held(self) -> Iterator[Ownership]:
        self.calls.append(("held",))
        if self.hold_gate is not None:
            self.hold_gate.wait(10)
        self.holding = True
        try:
            yield self.stored() if self.stored is not None else Ownership("allocation")
        finally:
            self.holding = False
            self.released += 1
            if self.release_error is not None:
                raise self.release_error

    def sku_of_batch(self, ref: str) -> str | None:
        self.calls.append(("sku_of_batch", ref))
        return self.batches.get(ref)

    def add_batch(self, ref: str, sku: str, qty: int, eta: date | None) -> None:
        self._decide("add_batch", ref, sku, qty, eta)
        self.batches[ref] = sku

    def allocate(self, orderid: str, sku: str, qty: int) -> str:
        self._decide("allocate", orderid, sku, qty)
        return self.batchref

    def deallocate(self, orderid: str, sku: str) -> str:
        self._decide("deallocate", orderid, sku)
        return self.batchref

    def change_batch_quantity(self, ref: str, qty: int) -> QuantityChanged:
        self._decide("change_batch_quantity", ref, qty)
        return self.changed or QuantityChanged(self.batches.get(ref, ""), [], [])

    def close(self) -> None:
        self.closed = True

    def _decide(self, *call: Any) -> None:
        self.calls.append(call)
        if self.gate is not None:
            self.gate.wait(10)
        if self.refusal is not None:
            raise self.refusal
