"""Message transport port shared by the legacy bridge and the new domain.

Public API:

- :class:`Message`: one outgoing or delivered message (body, routing key, properties).
- :class:`Delivery`: a message received from a queue, with the tag to ack it.
- :class:`QueueSpec`: a durable queue, its bindings and its dead-letter settings.
- :class:`Broker`: the port. Implementations: in-process (``memory://``) and
  RabbitMQ via pika (``amqp://``).
- :func:`connect`: build the implementation named by a ``BROKER_URL``.
- :class:`BrokerError`: the broker is unreachable or refused a publish.
- :class:`BrokerRefused`: a :class:`BrokerError` no retry cures (credentials, virtual
  host, URL).
"""

from broker.errors import BrokerError, BrokerRefused
from broker.port import Broker, Delivery, Message, QueueSpec


def connect(url: str) -> Broker:
    """Return a broker for ``url``: ``memory://[name]`` or ``amqp://...``.

    Nothing connects before this is called.
    """
    if url.startswith("memory://"):
        from broker.memory import shared_memory_broker

        return shared_memory_broker(url)
    if url.startswith(("amqp://", "amqps://")):
        from broker.rabbitmq import RabbitBroker

        return RabbitBroker(url)
    scheme = url.partition("://")[0] if "://" in url else url[:20]
    raise BrokerRefused(
        f"unsupported BROKER_URL scheme {scheme!r}: use amqp://, amqps:// or memory://"
    )


def is_in_process(url: str) -> bool:
    """True when ``url`` names the embedded broker, which only reaches this process."""
    return url.startswith("memory://")


__all__ = [
    "Broker",
    "BrokerError",
    "BrokerRefused",
    "Delivery",
    "Message",
    "QueueSpec",
    "connect",
    "is_in_process",
]
