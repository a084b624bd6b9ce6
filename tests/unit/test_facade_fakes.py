"""Fakes the facade's unit tests share (this module holds no tests)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from skeleton_app import facade_of

LEGACY = "http://legacy.test:8080"
ROUTE = "/allocations/<orderid>"


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
    assert facade_of(app).shadow.drain(10), "shadow work did not finish"


def metric(app: Flask, name: str, **labels: str) -> float:
    """A sample's value from the app's registry (0 when absent)."""
    registry = facade_of(app).metrics.registry
    assert registry is not None
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
