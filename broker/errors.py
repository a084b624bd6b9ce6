class BrokerError(Exception):
    """The broker is unreachable, closed the channel, or did not confirm a publish."""
