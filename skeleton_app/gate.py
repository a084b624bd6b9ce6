"""The cutover gate: a route moves to ``new`` only after enough shadow traffic agreed; a
write group only after enough of legacy's decisions were judged the same by the new rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from skeleton_app.shadow_results import Parity, Window


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    parity: Parity
    summary: str
    """One line, kept in the audit: the evidence and the thresholds."""


MIN_SAMPLES_FLOOR = 10
"""Below this many samples a gate proves nothing: a move through it counts as forced."""

MIN_PARITY_FLOOR = 95.0
"""Below this parity (%) a gate proves nothing: a move through it counts as forced."""


@dataclass(frozen=True)
class CutoverGate:
    """Shadow parity of at least ``min_parity`` percent over at least ``min_samples``.

    Thresholds below the floor (``MIN_SAMPLES_FLOOR`` samples, ``MIN_PARITY_FLOOR`` %)
    are no gate: a move they would let through needs ``force`` and is audited as forced.
    """

    min_parity: float = 99.9
    min_samples: int = 100
    window: Window = Window()

    @property
    def below_floor(self) -> bool:
        return self.min_samples < MIN_SAMPLES_FLOOR or self.min_parity < MIN_PARITY_FLOOR

    def describe_floor(self) -> str:
        return (
            f"thresholds {self.min_parity:g}% over {self.min_samples} samples are below "
            f"the floor ({MIN_PARITY_FLOOR:g}% over {MIN_SAMPLES_FLOOR} samples)"
        )

    def judge(self, parity: Parity, since: datetime | None = None) -> GateVerdict:
        """``parity``: the route's shadow results in the window; ``since``: they are only
        those newer than the route's last move back to legacy (fresh evidence)."""
        percent = parity.percent
        passed = (
            parity.samples >= self.min_samples
            and percent is not None
            and percent >= self.min_parity
        ) or (self.min_samples == 0 and percent is None)
        evidence = f"shadow parity {parity.describe()}" if parity.samples else "no shadow samples"
        fresh = (
            ""
            if since is None
            else f" since the move back to legacy at {since.isoformat(timespec='seconds')}"
        )
        summary = (
            f"{evidence} in {self.window.describe()}{fresh}; "
            f"needs >= {self.min_parity:g}% over >= {self.min_samples} samples"
        )
        return GateVerdict(passed, parity, summary)

    def judge_decisions(self, parity: Parity, group: str) -> GateVerdict:
        """A write group's verdict on decision parity: how many of legacy's decisions on
        its routes the new rules took the same way (``matches``) or not (``mismatches``),
        counted by the consumer since it started judging (no window)."""
        percent = parity.percent
        passed = (
            parity.samples >= self.min_samples
            and percent is not None
            and percent >= self.min_parity
        ) or (self.min_samples == 0 and percent is None)
        evidence = (
            f"decision parity of write group {group} {parity.describe()}"
            if parity.samples
            else f"no decisions of write group {group} judged"
        )
        summary = f"{evidence}; needs >= {self.min_parity:g}% over >= {self.min_samples} samples"
        return GateVerdict(passed, parity, summary)
