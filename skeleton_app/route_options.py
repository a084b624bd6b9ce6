"""Per-route options: how a route is shadowed, compared and split for a canary."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from skeleton_app.patterns import RouteError

_KEY_SOURCES = ("path", "header", "query", "cookie")
_FIELD_NAME = re.compile(r"[^\s]{1,128}")


@dataclass(frozen=True)
class RouteOptions:
    """Options stored with a route (as JSON).

    ``allow_mutating_shadow``: shadow (and A/A) POST, PUT, PATCH and DELETE requests too —
    their side effects happen twice. ``ignore_fields``: JSON object keys left out of the
    comparison wherever they occur. ``unordered_lists``: lists compare as multisets.
    ``canary_key``: what keeps a client on one side during a canary: ``path`` (all path
    arguments, the default), ``path:NAME``, ``header:NAME``, ``query:NAME`` or
    ``cookie:NAME``. ``sample_rate``: share of requests shadowed (0-1), None for the
    facade's default.
    """

    allow_mutating_shadow: bool = False
    ignore_fields: tuple[str, ...] = field(default=())
    unordered_lists: bool = False
    canary_key: str = "path"
    sample_rate: float | None = None

    def __post_init__(self) -> None:
        for name in self.ignore_fields:
            if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
                raise RouteError(f"invalid field name to ignore: {name!r}")
        source, _, name = self.canary_key.partition(":")
        if source not in _KEY_SOURCES or (source != "path" and not name):
            raise RouteError(
                f"invalid canary key {self.canary_key!r} (use path, path:NAME, header:NAME, "
                "query:NAME or cookie:NAME)"
            )
        rate = self.sample_rate
        if rate is not None and (not math.isfinite(rate) or not 0 <= rate <= 1):
            raise RouteError(f"sample rate must be between 0 and 1, got {rate!r}")

    def changed(self, changes: Mapping[str, Any]) -> RouteOptions:
        """These options with ``changes`` applied (keys are field names)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise RouteError(f"unknown route option(s): {', '.join(unknown)}")
        values = dict(changes)
        if "ignore_fields" in values:
            values["ignore_fields"] = tuple(sorted(set(values["ignore_fields"] or ())))
        if "sample_rate" in values and values["sample_rate"] is not None:
            values["sample_rate"] = float(values["sample_rate"])
        try:
            return replace(self, **values)
        except TypeError as exc:
            raise RouteError(f"invalid route options: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ignore_fields"] = list(self.ignore_fields)
        return data

    def to_json(self) -> str:
        """Only what differs from the defaults, keys sorted: ``{}`` for a plain route."""
        defaults = RouteOptions().to_dict()
        data = {k: v for k, v in self.to_dict().items() if v != defaults[k]}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> RouteOptions:
        """Parse stored options; unknown keys (from a newer facade) are ignored."""
        data = json.loads(text) if text else {}
        if not isinstance(data, dict):
            raise RouteError("stored route options are not a JSON object")
        known = {f.name for f in fields(cls)}
        return cls().changed({k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        """A short human summary, ``-`` for defaults."""
        parts = []
        if self.allow_mutating_shadow:
            parts.append("mutating-shadow")
        if self.ignore_fields:
            parts.append("ignore=" + ",".join(self.ignore_fields))
        if self.unordered_lists:
            parts.append("unordered-lists")
        if self.canary_key != "path":
            parts.append(f"key={self.canary_key}")
        if self.sample_rate is not None:
            parts.append(f"sample={self.sample_rate:g}")
        return " ".join(parts) or "-"


DEFAULT_OPTIONS = RouteOptions()
