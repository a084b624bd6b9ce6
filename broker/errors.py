class BrokerError(Exception):
    """The broker is unreachable, closed the channel, or did not confirm a publish."""


class BrokerRefused(BrokerError):
    """A failure no retry cures: the broker refused the credentials or the virtual host,
    or the URL cannot name a broker (unsupported scheme, malformed)."""
