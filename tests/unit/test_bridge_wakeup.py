"""The relay's adaptive poll: how long it waits between looks at the change table.

A fake clock stands in for time: the stop event's ``wait`` advances it instead of
sleeping, so the waits the poll asks for are recorded exactly and nothing is timed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from examples.legacy_shop import TABLES
from legacy_bridge import install, wakeup
from legacy_bridge.wakeup import FAST_S, LINGER_S, Poll, wakeup_for
from tests.unit.test_bridge_contract import add_product, create_legacy_schema, execute


class Clock:
    """A fake monotonic clock with a stop event whose waits only advance it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.on_wait: list[object] = []  # callables run after a given wait (by index)

    def monotonic(self) -> float:
        return self.now

    # the threading.Event interface the poll uses
    def is_set(self) -> bool:
        return False

    def wait(self, seconds: float | None = None) -> bool:
        assert seconds is not None
        self.now += seconds
        self.waits.append(round(seconds, 6))
        return False


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(wakeup.time, "monotonic", clock.monotonic)
    return clock


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    create_legacy_schema(engine)
    install(engine, TABLES)
    yield engine
    engine.dispose()


@pytest.fixture
def poll(engine: Engine) -> Iterator[Poll]:
    poll = Poll(engine)
    yield poll
    poll.close()


def test_an_idle_relay_backs_off_to_its_poll_interval(poll: Poll, clock: Clock) -> None:
    assert poll.wait(0.2, clock) is False  # type: ignore[arg-type]

    assert clock.waits == [0.005, 0.01, 0.02, 0.04, 0.08, 0.045]  # then the deadline
    assert poll.looks == 5
    clock.waits.clear()
    assert poll.wait(0.2, clock) is False  # type: ignore[arg-type]
    assert clock.waits == [0.16, 0.04]
    clock.waits.clear()
    assert poll.wait(0.2, clock) is False  # type: ignore[arg-type]
    assert clock.waits == [0.2]  # one cycle per poll interval, no looks in between
    assert poll.looks == 6


def test_after_publishing_the_relay_looks_every_few_ms_for_a_while(
    poll: Poll, clock: Clock
) -> None:
    assert poll.wait(0.2, clock) is False  # type: ignore[arg-type]
    clock.waits.clear()

    assert poll.wait(30.0, clock, published=3) is False  # type: ignore[arg-type]

    fast = [w for w in clock.waits if w == FAST_S]
    assert len(fast) == pytest.approx(LINGER_S / FAST_S, abs=1)
    assert clock.waits[: len(fast)] == fast  # first fast, then doubling
    slow = clock.waits[len(fast) :]
    assert all(b == 2 * a for a, b in zip(slow, slow[1:-1], strict=False))
    assert sum(clock.waits) == pytest.approx(30.0)


def test_a_committed_change_ends_the_wait_at_the_next_look(
    poll: Poll, clock: Clock, engine: Engine
) -> None:
    add_product(engine, 1, "SKU-1")

    assert poll.wait(30.0, clock, published=1) is True  # type: ignore[arg-type]
    assert clock.waits == [FAST_S]


def test_pending_changes_the_relay_could_not_claim_make_it_back_off(
    poll: Poll, clock: Clock, engine: Engine
) -> None:
    add_product(engine, 1, "SKU-1")  # stays pending: this test's relay claims nothing
    steps = []
    for _ in range(4):
        clock.waits.clear()
        assert poll.wait(30.0, clock) is True  # type: ignore[arg-type]
        steps.append(clock.waits[-1])

    assert steps == [FAST_S, 2 * FAST_S, 4 * FAST_S, 8 * FAST_S]
    clock.waits.clear()
    execute(engine, "UPDATE strangler_change SET pos = change_id")  # claimed at last
    assert poll.wait(30.0, clock, published=1) is False  # type: ignore[arg-type]
    assert clock.waits[0] == FAST_S


def test_a_database_error_wakes_the_relay_whose_cycle_then_retries(
    poll: Poll, clock: Clock, engine: Engine
) -> None:
    execute(engine, "ALTER TABLE strangler_change RENAME TO strangler_change_gone")

    assert poll.wait(30.0, clock) is True  # type: ignore[arg-type]


def test_without_notify_in_the_install_the_relay_polls(engine: Engine) -> None:
    chosen = wakeup_for(engine)
    assert isinstance(chosen, Poll)
    chosen.close()
