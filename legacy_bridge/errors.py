"""Errors the bridge raises to its callers."""

from __future__ import annotations


class BridgeError(Exception):
    """The bridge cannot do what was asked (bad configuration, unsupported database)."""


class BridgeNotInstalled(BridgeError):
    """The legacy database has no change capture installed (run ``bridge install``)."""


class UnknownTable(BridgeError):
    """A table asked for capture does not exist or cannot be captured."""
