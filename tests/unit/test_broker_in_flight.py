"""The RabbitMQ adapter's count of unconfirmed publishes (pure, no broker)."""

from __future__ import annotations

from broker.rabbitmq import _InFlight


def published(count: int) -> _InFlight:
    in_flight = _InFlight()
    for tag in range(1, count + 1):
        in_flight.add(tag)
    return in_flight


def test_a_multiple_ack_settles_every_tag_up_to_it() -> None:
    in_flight = published(10)
    assert in_flight.settle(4, multiple=True) == 4
    assert len(in_flight) == 6
    assert in_flight.settle(4, multiple=True) == 0  # again: nothing left to settle
    assert in_flight.settle(10, multiple=True) == 6
    assert len(in_flight) == 0


def test_single_acks_out_of_order_count_once_and_join_a_later_multiple_ack() -> None:
    in_flight = published(10)
    assert in_flight.settle(3, multiple=False) == 1
    assert in_flight.settle(3, multiple=False) == 0
    assert in_flight.settle(7, multiple=False) == 1
    assert len(in_flight) == 8
    assert in_flight.settle(5, multiple=True) == 4  # 1, 2, 4, 5 (3 was settled)
    assert in_flight.settle(1, multiple=False) == 0  # already gone
    assert in_flight.settle(6, multiple=False) == 1  # 6, then 7 leaves with it
    assert len(in_flight) == 3
    assert in_flight.settle(11, multiple=False) == 0  # never published
    in_flight.add(11)
    assert in_flight.settle(11, multiple=True) == 4
    assert len(in_flight) == 0
