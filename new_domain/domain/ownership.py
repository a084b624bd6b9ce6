"""Who owns a product: the write group's ownership rule (see docs/write-path.md).

At any moment each product is owned by exactly one system, legacy or new. A write group's
rule says which: ``legacy`` (and ``shadow``, which only judges legacy's decisions) owns
nothing for new; ``canary N`` owns the products whose sku falls in the first N% of
buckets (sticky: growing the canary only adds products); ``new`` owns every product.

A move (``rule`` replaces ``previous_rule``) is ``moving`` until its fence comes back
through legacy; meanwhile the products the two rules disagree about are changing hands
and neither system decides about them.

The new write path refuses to decide about a product that is not the new system's now
with :class:`NotOwned`.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass
from datetime import datetime

BUCKETS = 10_000


def bucket(sku: str) -> int:
    """The sku's stable bucket, 0 to 9999: the first 8 bytes of its SHA-256, mod 10000."""
    digest = hashlib.sha256(sku.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class InvalidRule(ValueError):
    """Not an ownership rule."""


class Owner(enum.StrEnum):
    LEGACY = "legacy"
    NEW = "new"
    CHANGING = "changing"
    """The product is changing hands: neither system decides about it now."""


class NotOwned(Exception):
    """The product is not the new system's to decide about now: ``owner`` is
    ``Owner.LEGACY`` (legacy decides: proxy the request) or ``Owner.CHANGING`` (nobody
    decides while it changes hands: answer 503, retry). ``sku`` is empty when the request
    named a batch the new system does not know."""

    def __init__(self, sku: str, owner: Owner) -> None:
        what = f"product {sku}" if sku else "an unknown batch's product"
        if owner is Owner.CHANGING:
            super().__init__(f"{what} is changing owner; retry")
        else:
            super().__init__(f"{what} is owned by {owner.value}")
        self.sku = sku
        self.owner = owner


class State(enum.StrEnum):
    ACTIVE = "active"
    MOVING = "moving"


@dataclass(frozen=True)
class OwnershipRule:
    """``legacy``, ``shadow``, ``canary N`` (0-100, two decimals) or ``new``."""

    mode: str
    percent: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("legacy", "shadow", "canary", "new"):
            raise InvalidRule(f"unknown ownership rule {self.mode!r}")
        if (self.mode == "canary") != (self.percent is not None):
            raise InvalidRule("only canary takes a percentage, and it needs one")
        if self.percent is not None and (
            not math.isfinite(self.percent)
            or not 0 <= self.percent <= 100
            or round(self.percent, 2) != self.percent
        ):
            raise InvalidRule(f"canary percentage must be 0-100 with two decimals: {self.percent}")

    @classmethod
    def parse(cls, text: str) -> OwnershipRule:
        words = text.strip().lower().split()
        if len(words) == 1:
            return cls(words[0])
        if len(words) == 2 and words[0] == "canary":
            try:
                return cls("canary", float(words[1].rstrip("%")))
            except ValueError:
                raise InvalidRule(f"bad canary percentage {words[1]!r}") from None
        raise InvalidRule(f"unknown ownership rule {text!r}")

    def __str__(self) -> str:
        return self.mode if self.percent is None else f"canary {self.percent:g}"

    def owns(self, sku: str) -> bool:
        """Does this rule give ``sku``'s product to the new system?"""
        if self.mode == "new":
            return True
        if self.mode == "canary" and self.percent is not None:
            return bucket(sku) < _buckets_owned(self)
        return False

    @property
    def owns_any(self) -> bool:
        return self.mode == "new" or (self.mode == "canary" and bool(self.percent))


LEGACY_RULE = OwnershipRule("legacy")


@dataclass(frozen=True)
class Ownership:
    """A write group's ownership: its rule, the one it replaces while ``moving``, and the
    epoch (one more with every move)."""

    group: str
    rule: OwnershipRule = LEGACY_RULE
    previous_rule: OwnershipRule | None = None
    epoch: int = 0
    state: State = State.ACTIVE
    changed_at: datetime | None = None
    changed_by: str | None = None

    def owner(self, sku: str) -> Owner:
        """Who decides about ``sku``'s product now (CHANGING: nobody, retry)."""
        now = self.rule.owns(sku)
        previous = self.previous_rule
        if self.state is State.MOVING and previous is not None and previous.owns(sku) != now:
            return Owner.CHANGING
        return Owner.NEW if now else Owner.LEGACY

    def owner_of_unknown_batch(self) -> Owner:
        """Who answers a request naming a batch the new system does not know (so no
        sku): the new system (its 404) when it owns every product, else legacy, whose
        batch it may be; nobody while a move changes which (retry)."""
        now = _buckets_owned(self.rule) == BUCKETS
        previous = self.previous_rule
        moving = self.state is State.MOVING
        if moving and previous is not None and (_buckets_owned(previous) == BUCKETS) != now:
            return Owner.CHANGING
        return Owner.NEW if now else Owner.LEGACY

    def guarded_by_new(self, sku: str) -> bool:
        """Is a legacy change to ``sku``'s product that is not an echo a violation? The
        product is the new system's (for a moving group: under the previous rule)."""
        if self.state is State.MOVING and self.previous_rule is not None:
            return self.previous_rule.owns(sku)
        return self.rule.owns(sku)

    def hands_change(self, rule: OwnershipRule) -> bool:
        """Would moving to ``rule`` make any product change hands (so it needs a fence)?
        The products a rule owns are fixed by its share: ``shadow`` and ``legacy`` own
        the same (none), ``canary 100`` and ``new`` the same (all)."""
        return _buckets_owned(self.rule) != _buckets_owned(rule)


def _buckets_owned(rule: OwnershipRule) -> int:
    if rule.mode == "new":
        return BUCKETS
    if rule.mode == "canary" and rule.percent is not None:
        return round(rule.percent * 100)
    return 0
