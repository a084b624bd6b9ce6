"""Entry points: the change consumer and the command line."""
