"""Sticky canary split: the same request key always lands on the same side.

A key's bucket is ``sha256("METHOD pattern\\nkey") mod 10000``; the new system serves the
buckets below ``percent * 100``. Raising the percentage only adds buckets, so a key served
by new at 10% stays on new at 20%, and lowering it only removes buckets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from werkzeug.datastructures import Headers, MultiDict

BUCKETS = 10000


def bucket(method: str, pattern: str, key: str) -> int:
    digest = hashlib.sha256(f"{method} {pattern}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def serves_new(method: str, pattern: str, key: str, percent: float) -> bool:
    return bucket(method, pattern, key) < round(percent * 100)


def request_key(
    source: str,
    path: str,
    args: Mapping[str, Any],
    headers: Headers,
    query: MultiDict[str, str],
) -> str:
    """The request key named by a route's ``canary_key`` option; the path when it is missing.

    ``path``: every path argument, in the pattern's order; ``path:NAME``, ``header:NAME``,
    ``query:NAME``, ``cookie:NAME``: that one value.
    """
    kind, _, name = source.partition(":")
    value: str | None = None
    if kind == "path":
        value = (
            str(args[name])
            if name in args
            else ("/".join(str(v) for v in args.values()) if not name and args else None)
        )
    elif kind == "header":
        value = headers.get(name)
    elif kind == "query":
        value = query.get(name)
    elif kind == "cookie":
        value = _cookie(headers.get("Cookie"), name)
    return value if value else path


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(header)
    except CookieError:
        return None
    morsel = cookies.get(name)
    return morsel.value if morsel is not None else None
