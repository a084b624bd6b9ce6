"""The cutover gate: a route moves to ``new`` only after enough shadow traffic agreed."""

from __future__ import annotations

from dataclasses import dataclass

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

    def judge(self, parity: Parity) -> GateVerdict:
        percent = parity.percent
        passed = (
            parity.samples >= self.min_samples
            and percent is not None
            and percent >= self.min_parity
        ) or (self.min_samples == 0 and percent is None)
        evidence = f"shadow parity {parity.describe()}" if parity.samples else "no shadow samples"
        summary = (
            f"{evidence} in {self.window.describe()}; "
            f"needs >= {self.min_parity:g}% over >= {self.min_samples} samples"
        )
        return GateVerdict(passed, parity, summary)
