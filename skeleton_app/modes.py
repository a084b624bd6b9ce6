"""How the facade serves a route."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """Who answers a route.

    ``LEGACY``: proxied to the legacy system. ``NEW``: answered by the new system.
    Modes that involve both systems (shadow, canary) join this enum; anything the facade
    does not know how to serve falls back to ``LEGACY``.
    """

    LEGACY = "legacy"
    NEW = "new"
