"""The retry policy of back-sync's loop: reconnect and try again, with back-off."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    sleep_using_event,
    stop_when_event_set,
    wait_exponential,
)

MAX_RECONNECT_DELAY = 30.0


def reconnecting(
    stop: threading.Event, first_delay: float, on_failure: Callable[[RetryCallState], None]
) -> Retrying:
    """Retry a round that failed (broker or legacy database unavailable, or anything
    unexpected) after ``first_delay`` seconds, doubling up to 30 s, until ``stop`` is set;
    ``on_failure`` logs (and disconnects where needed) before each wait. Each call starts
    afresh. A stop while waiting returns None."""
    return Retrying(
        retry=_failed,
        wait=wait_exponential(multiplier=first_delay, max=MAX_RECONNECT_DELAY),
        stop=stop_when_event_set(stop),
        sleep=sleep_using_event(stop),
        before_sleep=on_failure,
        retry_error_callback=lambda state: None,
    )


def failure_of(state: RetryCallState) -> tuple[BaseException | None, float]:
    """The error a round failed with, and how long until the next try."""
    error = state.outcome.exception() if state.outcome else None
    return error, state.next_action.sleep if state.next_action else 0.0


def _failed(state: RetryCallState) -> bool:
    return state.outcome is not None and state.outcome.failed
