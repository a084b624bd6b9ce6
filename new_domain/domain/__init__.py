"""The allocation domain: pure model, commands and events (no I/O, no SQLAlchemy)."""
