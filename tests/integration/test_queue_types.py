"""Queue types on the real RabbitMQ: the kit's queues are quorum queues unless
``BROKER_URL`` says ``queue_type=classic``, and a queue of the other type is a clear
error, not a silent second queue (docs/rabbitmq.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import broker
from broker import Broker, BrokerError, Message, QueueSpec
from broker.rabbitmq import DELIVERY_LIMIT, queue_arguments, split_queue_type
from tests.services import unique_name

pytestmark = pytest.mark.rabbitmq


def classic(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}queue_type=classic"


@pytest.fixture
def names(amqp_url: str) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    connection = broker.connect(amqp_url)
    try:
        for name in created:
            connection.delete_queue(name)
    finally:
        connection.close()


def declared(connection: Broker, names: list[str], name: str, exchange: str) -> None:
    names.append(name)
    connection.declare_queue(QueueSpec(name, [(exchange, "#")]))


def test_queues_are_quorum_by_default_and_classic_on_request_and_neither_changes(
    amqp_url: str, names: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    exchange = unique_name("test_types")
    default, single_node = broker.connect(amqp_url), broker.connect(classic(amqp_url))
    named_quorum = broker.connect(f"{amqp_url}?queue_type=quorum")
    try:
        declared(default, names, quorum := unique_name("test_quorum"), exchange)
        declared(single_node, names, plain := unique_name("test_classic"), exchange)

        with pytest.raises(BrokerError) as as_classic:
            single_node.declare_queue(QueueSpec(quorum, [(exchange, "#")]))
        with pytest.raises(BrokerError) as as_quorum:
            named_quorum.declare_queue(QueueSpec(plain, [(exchange, "#")]))
        # the default meets a queue of an older install: kept, with a warning
        with caplog.at_level("WARNING", logger="broker.rabbitmq"):
            default.declare_queue(QueueSpec(plain, [(exchange, "#")]))

        # every connection still works after the refusals, and both queues carry messages
        default.publish(exchange, [Message("a.b", b"{}", "m-1")])
        for connection, queue in ((default, quorum), (single_node, plain)):
            [delivery] = connection.get_batch(queue, 10, 5.0)
            assert delivery.message.message_id == "m-1"
            connection.ack(delivery.delivery_tag)
    finally:
        default.close()
        single_node.close()
        named_quorum.close()

    assert str(as_classic.value) == (
        f"queue {quorum!r} exists as a quorum queue and a queue's "
        "type cannot change: add queue_type=quorum to BROKER_URL to keep it, or migrate it "
        "(docs/rabbitmq.md#queue-types)"
    )
    assert f"queue {plain!r} exists as a classic queue" in str(as_quorum.value)
    assert "add queue_type=classic to BROKER_URL" in str(as_quorum.value)
    assert [r.getMessage() for r in caplog.records if r.name == "broker.rabbitmq"] == [
        f"queue {plain!r} exists as a classic queue: kept as it is (new queues are quorum; "
        "to move it, see docs/rabbitmq.md#queue-types)"
    ]


def test_a_redelivery_from_a_quorum_queue_is_the_message_published(
    amqp_url: str, names: list[str]
) -> None:
    exchange = unique_name("test_types")
    connection = broker.connect(amqp_url)
    try:
        declared(connection, names, queue := unique_name("test_quorum"), exchange)
        sent = Message("a.b", b'{"n": 1}', "m-1", headers={"x-kept": "yes"})
        connection.publish(exchange, [sent])
        [first] = connection.get_batch(queue, 1, 5.0)
        connection.reject(first.delivery_tag, requeue=True)
        [again] = connection.get_batch(queue, 1, 5.0)
        connection.ack(again.delivery_tag)
    finally:
        connection.close()
    assert again.redelivered and again.message == first.message
    assert again.message.headers == {"x-kept": "yes"}  # no x-delivery-count


def test_the_queue_type_is_read_from_the_url_and_checked() -> None:
    assert split_queue_type("amqp://u:p@h:5672/%2F?heartbeat=5&queue_type=classic") == (
        "amqp://u:p@h:5672/%2F?heartbeat=5",
        "classic",
    )
    assert split_queue_type("amqp://h/") == ("amqp://h/", "quorum")
    with pytest.raises(BrokerError, match="queue_type must be quorum or classic, got 'mirrored'"):
        split_queue_type("amqp://h/?queue_type=mirrored")
    assert queue_arguments("quorum", "q.dlx") == {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": "q.dlx",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert queue_arguments("classic", "q.dlx") == {"x-queue-type": "classic"}
