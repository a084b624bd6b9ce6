"""Calling the new system's handlers with a time limit, never on the caller's thread.

A handler runs in a small thread pool inside an application context; the caller waits at
most ``timeout`` seconds. Serving and shadowing use separate pools, so shadow work can never
take the threads that serve clients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from flask import Flask, Response

from skeleton_app.compare import Answer
from skeleton_app.errors import printable
from skeleton_app.new_routes import NewHandler, NewRequest
from skeleton_app.patterns import RouteKey
from skeleton_app.read_model import ReadModel, decision_parity_of

log = logging.getLogger(__name__)
T = TypeVar("T")


class NewSystemTimeout(Exception):
    """The new system did not answer in time."""


class NewSystem:
    """The new system's handlers over its read model."""

    def __init__(
        self,
        app: Flask,
        handlers: Mapping[RouteKey, NewHandler],
        read_model: ReadModel,
        timeout: float = 2.0,
        serve_workers: int = 8,
        shadow_workers: int = 2,
    ) -> None:
        self._app = app
        self._handlers = dict(handlers)
        self._read_model = read_model
        self.timeout = timeout
        self._sizes = {"serve": serve_workers, "shadow": shadow_workers}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    @property
    def routes(self) -> frozenset[RouteKey]:
        return frozenset(self._handlers)

    def decision_parity(self) -> dict[str, dict[str, Any]]:
        """The write routes' decision parity; empty (and one log line) when the new
        database cannot say."""
        try:
            return decision_parity_of(self._read_model)
        except Exception as exc:  # noqa: BLE001 - the route table is still worth showing
            log.warning("decision parity unavailable: %s", printable(str(exc).split("\n")[0]))
            return {}

    def handler(self, method: str, pattern: str) -> NewHandler | None:
        return self._handlers.get((method, pattern))

    def serve(self, handler: NewHandler, request: NewRequest) -> Response:
        """The handler's response (body read); NewSystemTimeout, or the handler's error."""
        response, _ = self._call("serve", handler, request)
        return response

    def call(self, work: Callable[[], T]) -> T:
        """``work()`` on a serving thread, inside an application context, waited for at
        most ``timeout`` seconds (NewSystemTimeout); its error is raised here."""
        future: Future[T] = self._pool("serve").submit(self._in_context, work)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            future.cancel()
            raise NewSystemTimeout(
                f"the new system did not answer within {self.timeout:g} s"
            ) from None

    def acquire(self, enter: Callable[[], T], release: Callable[[], object]) -> T:
        """:meth:`call` for taking a resource (a lock): when the wait gives up, ``enter``
        may still succeed later on its thread, and ``release()`` then runs there, so
        nothing stays taken."""
        future: Future[T] = self._pool("serve").submit(self._in_context, enter)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            if not future.cancel():
                future.add_done_callback(lambda done: _release_taken(done, release))
            raise NewSystemTimeout(
                f"the new system did not answer within {self.timeout:g} s"
            ) from None

    def release(self, release: Callable[[], object]) -> None:
        """Run ``release()`` on a serving thread, not waited for (a hung database must not
        hold an answer that is ready); a failure is logged."""
        try:
            self._pool("serve").submit(_logged, release)
        except RuntimeError:  # shut down: the process is ending, and its connections too
            log.warning("release after shutdown skipped")

    def _in_context(self, work: Callable[[], T]) -> T:
        with self._app.app_context():
            return work()

    def answer(self, handler: NewHandler, request: NewRequest) -> Answer:
        """The handler's answer for a comparison, from the shadow pool."""
        response, elapsed = self._call("shadow", handler, request)
        return Answer(
            response.status_code,
            tuple(response.headers.items()),
            response.get_data(),
            elapsed,
        )

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def _call(self, pool: str, handler: NewHandler, request: NewRequest) -> tuple[Response, float]:
        started = time.perf_counter()
        future: Future[Response] = self._pool(pool).submit(self._run, handler, request)
        try:
            response = future.result(timeout=self.timeout)
        except FutureTimeout:
            future.cancel()
            raise NewSystemTimeout(
                f"the new system did not answer within {self.timeout:g} s"
            ) from None
        return response, time.perf_counter() - started

    def _run(self, handler: NewHandler, request: NewRequest) -> Response:
        with self._app.app_context():
            response = handler(self._read_model, request)
            response.get_data()  # a lazy body is produced here, inside the time limit
            return response

    def _pool(self, name: str) -> ThreadPoolExecutor:
        pool = self._pools.get(name)
        if pool is None:
            with self._lock:
                pool = self._pools.get(name)
                if pool is None:
                    pool = ThreadPoolExecutor(self._sizes[name], thread_name_prefix=f"new-{name}")
                    self._pools[name] = pool
        return pool


def _release_taken(done: Future[Any], release: Callable[[], object]) -> None:
    if not done.cancelled() and done.exception() is None:
        _logged(release)


def _logged(release: Callable[[], object]) -> None:
    try:
        release()
    except Exception as exc:  # noqa: BLE001 - nothing to answer; the transaction ends with its connection
        # expected while the new database is down: one line, no traceback
        log.warning("releasing a hold on the new system failed: %s", printable(str(exc)))
