"""Service layer: the message bus, its handlers and the unit of work."""
