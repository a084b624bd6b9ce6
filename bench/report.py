"""Results of a benchmark: figures with baselines and targets, as a table and as JSON."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Subject = Literal["value", "ratio", "added"]
"""What a target constrains: the figure itself, figure / baseline, or figure - baseline."""

_OPERATORS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Target:
    """``subject op limit``, e.g. ratio >= 0.5 or added <= 1.0 (in the figure's unit)."""

    subject: Subject
    op: Literal[">=", "<="]
    limit: float

    def describe(self, unit: str) -> str:
        if self.subject == "ratio":
            return f"ratio {self.op} {self.limit:g}"
        suffix = f" {unit}" if unit else ""
        name = "added" if self.subject == "added" else "value"
        return f"{name} {self.op} {self.limit:g}{suffix}"

    def met(self, value: float, baseline: float | None) -> bool | None:
        if self.subject == "value":
            subject: float | None = value
        elif baseline is None:
            subject = None
        elif self.subject == "ratio":
            subject = value / baseline if baseline else None
        else:
            subject = value - baseline
        return None if subject is None else _OPERATORS[self.op](subject, self.limit)


@dataclass(frozen=True)
class Figure:
    """One measured figure, its baseline from the same run, and its target (if any)."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.baseline)

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "target": None if self.target is None else asdict(self.target),
            "target_text": "" if self.target is None else self.target.describe(self.unit),
            "met": self.met,
        }


Status = Literal["ok", "not available", "error"]


@dataclass
class Result:
    """What one benchmark run produced."""

    name: str
    size: int
    title: str = ""
    status: Status = "ok"
    note: str = ""
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0

    @property
    def all_met(self) -> bool:
        return all(f.met is not False for f in self.figures)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "size": self.size,
            "status": self.status,
            "note": self.note,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "all_targets_met": self.all_met if self.status == "ok" else None,
            "figures": [f.as_dict() for f in self.figures],
            "details": self.details,
            "machine": self.machine,
        }


def write_json(result: Result, directory: Path) -> Path:
    """Write ``<directory>/<name>.json`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.name}.json"
    path.write_text(json.dumps(result.as_dict(), indent=2, default=str) + "\n")
    return path


def number(value: float | None, unit: str = "") -> str:
    """A figure for a table: few significant digits, thousands separated."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def met_text(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[met]


def table_rows(result: Result) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for f in result.figures:
        baseline = number(f.baseline, f.unit)
        if f.baseline_name and f.baseline is not None:
            baseline = f"{baseline} ({f.baseline_name})"
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        target = "-" if f.target is None else f.target.describe(f.unit)
        rows.append((f.name, number(f.value, f.unit), baseline, ratio, target, met_text(f.met)))
    return rows


HEADER = ("figure", "value", "baseline", "ratio", "target", "met")


def render_table(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> str:
    """A plain-text table with aligned columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *rows]):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(result: Result) -> str:
    """The result as printed after a run."""
    head = f"== {result.name}: {result.title} (size {result.size:,}) =="
    if result.status != "ok":
        note = result.note
        return f"{head}\n{note if note.startswith(result.status) else f'{result.status}: {note}'}"
    text = f"{head}\n{render_table(table_rows(result))}"
    if result.note:
        text += f"\n{result.note}"
    return text
