"""Which products an ownership move hands over (docs/write-path.md, *Write groups*).

A rule owns, for the new system, the products whose sku's bucket is below its share:
``legacy`` and ``shadow`` none, ``canary N`` the buckets below ``N * 100``, ``new`` all
of them. A move is a **takeover** when the new rule owns more (products go legacy -> new)
and a **hand-back** otherwise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

BUCKETS = 10_000


class InvalidMove(ValueError):
    """An ``OwnershipMoved`` event back-sync cannot read."""


def bucket(sku: str) -> int:
    """The sku's stable bucket, 0 to 9999: the first 8 bytes of its SHA-256, mod 10000."""
    digest = hashlib.sha256(sku.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def buckets_owned(rule: str) -> int:
    """How many buckets ``rule`` gives the new system (0 to 10000)."""
    words = rule.strip().lower().split()
    if words in (["legacy"], ["shadow"]):
        return 0
    if words == ["new"]:
        return BUCKETS
    if len(words) == 2 and words[0] == "canary":
        try:
            percent = float(words[1].rstrip("%"))
        except ValueError:
            raise InvalidMove(f"bad canary percentage in rule {rule!r}") from None
        if math.isfinite(percent) and 0 <= percent <= 100:
            return round(percent * 100)
    raise InvalidMove(f"unknown ownership rule {rule!r}")


@dataclass(frozen=True)
class Move:
    """A write group's ownership moved from ``previous_rule`` to ``rule`` (``epoch``)."""

    group: str
    epoch: int
    rule: str
    previous_rule: str

    @property
    def takeover(self) -> bool:
        """Does the new system own more products after the move?"""
        return buckets_owned(self.rule) > buckets_owned(self.previous_rule)

    def changes_hands(self, sku: str) -> bool:
        """Is ``sku``'s product owned by a different system after the move?"""
        low, high = sorted((buckets_owned(self.previous_rule), buckets_owned(self.rule)))
        return low <= bucket(sku) < high
