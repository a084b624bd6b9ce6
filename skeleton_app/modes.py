"""How the facade serves a route: the mode, and for a canary the share served by new."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from skeleton_app.patterns import RouteError


class Mode(StrEnum):
    """Who answers a route.

    ``LEGACY``: proxied to the legacy system. ``AA``: legacy answers; off the request path
    the same request goes to legacy a second time and both answers are compared (the noise
    floor). ``SHADOW``: legacy answers; off the request path the new system answers the same
    request and the answers are compared. ``CANARY``: a sticky share of the requests (by a
    hash of a request key) is answered by the new system, the rest by legacy. ``NEW``:
    answered by the new system. Anything the facade does not know falls back to ``LEGACY``.
    """

    LEGACY = "legacy"
    AA = "aa"
    SHADOW = "shadow"
    CANARY = "canary"
    NEW = "new"

    @property
    def needs_new_system(self) -> bool:
        return self in (Mode.SHADOW, Mode.CANARY, Mode.NEW)


@dataclass(frozen=True)
class RouteMode:
    """A mode and, for ``canary`` only, the percentage (0-100, two decimals) served by new.

    Written as text where it is stored and shown: ``legacy``, ``aa``, ``shadow``,
    ``canary 12.5``, ``new``.
    """

    mode: Mode
    percent: float | None = None

    def __post_init__(self) -> None:
        if self.mode is Mode.CANARY:
            if self.percent is None:
                raise RouteError("canary needs a percentage, e.g. 'canary 10'")
            if not math.isfinite(self.percent) or not 0 <= self.percent <= 100:
                raise RouteError(f"canary percentage must be 0-100, got {self.percent:g}")
            if round(self.percent, 2) != self.percent:
                raise RouteError(
                    f"canary percentage has at most two decimals, got {self.percent!r}"
                )
        elif self.percent is not None:
            raise RouteError(f"only canary takes a percentage, not {self.mode.value}")

    @classmethod
    def parse(cls, text: RouteMode | Mode | str, percent: float | str | None = None) -> RouteMode:
        """``"canary 10"``, ``("canary", 10)``, ``"new"``, ``Mode.NEW`` ... -> RouteMode."""
        if isinstance(text, RouteMode):
            if percent is not None:
                raise RouteError("the percentage is given twice")
            return text
        words = str(text).strip().lower().split()
        if not words:
            raise RouteError("a mode must be given")
        if len(words) > 2 or (len(words) == 2 and percent is not None):
            raise RouteError(f"unknown mode {str(text)!r}")
        try:
            mode = Mode(words[0])
        except ValueError:
            known = ", ".join(m.value for m in Mode)
            raise RouteError(f"unknown mode {str(text)!r} (known: {known})") from None
        raw = words[1] if len(words) == 2 else percent
        if raw is None:
            return cls(mode)
        try:
            value = float(str(raw).strip().rstrip("%"))
        except ValueError:
            raise RouteError(f"canary percentage must be a number, got {raw!r}") from None
        return cls(mode, value)

    def __str__(self) -> str:
        if self.mode is Mode.CANARY and self.percent is not None:
            return f"canary {self.percent:g}"
        return self.mode.value


LEGACY = RouteMode(Mode.LEGACY)
