"""Routing in the data plane: every request HAProxy can route itself goes straight to
legacy unless the route table says the facade has something to do with it.

The route table stays the one source of truth. HAProxy keeps a copy of the facade's
decision in a map file of regular expressions (``map_reg``), one line per step of the
facade's own route matching (:meth:`skeleton_app.patterns.PatternMatcher.search_order`,
the same werkzeug matcher walked in the order it searches), ``<regex of METHOD+path>
<legacy|facade>``; the first line that matches a request's ``METHOD`` and path says who
serves it, and a request no line matches is legacy's (a path the table does not know).
A line says ``legacy`` when the route is in mode ``legacy``; ``facade`` in any other mode,
for every route of a write group whatever its ownership, and for a route whose converters
check values the regex cannot (``<int(max=9):n>``: the facade decides, and proxies what it
refuses). A write group's routes go through the facade even while legacy owns every
product: the facade proxies such a write while it holds the group's ownership row, so a
move waits for it and it can never commit in legacy after a takeover's fence. HAProxy
holds no such lock; it would follow a move only when its map changes, which a loaded
machine can delay past the fence (docs/write-path.md).

The supervisor reads the table every ``interval`` seconds and,
when the lines differ, replaces the map's lines in one step through HAProxy's runtime
API (``prepare map``, ``add map @version``, ``commit map @version``), without a reload:
requests in flight finish where they went; the next ones follow the new map. While the
table cannot be read the last routing stays; when it could never be read, every request
goes to the facade, which decides. The map file on disk is rewritten too, and rendered
from the table when ``strangler serve`` starts, so a HAProxy started cold routes by the
current table.

Only a request that certainly routes the same in HAProxy and in the facade is routed
by the map: the facade's own paths (``/_strangler/...``, the metrics), a path with a
``%`` escape, a character beyond ``SAFE_PATH_CHARACTERS``, a ``.``/``..`` segment or a
leading ``//``, a query the facade's proxy would re-encode, and ``CONNECT`` always go to
the facade, whose checks apply.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from skeleton_app.modes import Mode
from skeleton_app.patterns import RESERVED_PREFIX, Candidate
from skeleton_app.routes_table import Routing

log = logging.getLogger("strangler.dataplane")

LEGACY, FACADE = "legacy", "facade"
"""Who serves a request: the map file's values, and HAProxy's backends."""

MapLine = tuple[str, str]
"""``(regex of METHOD+path, legacy|facade)``."""

EVERYTHING_TO_THE_FACADE: list[MapLine] = [("^", FACADE)]
"""The map while the route table was never read: the facade decides."""

_SAFE_PATH = r"^/[A-Za-z0-9/:@!$&\x27()*+,;=._~-]*$"
"""Paths the map routes (SAFE_PATH_CHARACTERS; ``\x27`` is ``'``)."""
_ODD_PATH = r"/\.\.?(/|$)|^//"
_ODD_QUERY = r"[^A-Za-z0-9/?:@!$&\x27()*+,;=._~%-]"
"""A query the facade's proxy would percent-encode before legacy sees it."""


@dataclass(frozen=True)
class LegacyUpstream:
    """Where legacy listens, from ``LEGACY_URL`` (``http(s)://host[:port][/prefix]``)."""

    host: str
    port: int
    tls: bool
    prefix: str
    base_url: str = ""
    """The URL as given, without a trailing slash (a redirect into it is rewritten)."""

    @classmethod
    def from_url(cls, url: str) -> LegacyUpstream:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a legacy URL: {url!r}")
        prefix = parts.path
        if any(c in prefix for c in "' \\\"%") or any(ord(c) < 0x21 for c in prefix):
            raise ValueError(f"the legacy URL's path cannot be written for HAProxy: {prefix!r}")
        tls = parts.scheme == "https"
        base = url.rstrip("/")
        if any(c in base for c in "' \\\"") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in base):
            raise ValueError(f"the legacy URL cannot be written for HAProxy: {base!r}")
        return cls(parts.hostname, parts.port or (443 if tls else 80), tls, prefix, base)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _quoted(text: str) -> str:
    if "'" in text:
        raise ValueError(f"cannot quote {text!r} for HAProxy")
    return f"'{text}'"


def frontend_lines(map_path: str, metrics_path: str = "/metrics") -> list[str]:
    """The public frontend's routing rules: the facade's own and odd requests to the
    facade, then the map's decision; the frontend's default backend is the facade."""
    own = RESERVED_PREFIX.rstrip("/")
    return [
        "    # routing: the facade's paths and odd requests to the facade, then the map",
        f"    acl strangler_own path_beg {RESERVED_PREFIX}",
        f"    acl strangler_own path {own} {_quoted(metrics_path)}",
        f"    acl strangler_safe path_reg {_quoted(_SAFE_PATH)}",
        f"    acl strangler_odd path_reg {_quoted(_ODD_PATH)}",
        f"    acl strangler_odd query -m reg {_quoted(_ODD_QUERY)}",
        "    acl strangler_odd method CONNECT",
        "    http-request set-var-fmt(txn.strangler_route) %[method]%[path]",
        "    use_backend facade if strangler_own || !strangler_safe || strangler_odd",
        "    use_backend legacy if { var(txn.strangler_route),"
        f"map_reg({_quoted(map_path)},{LEGACY}) -m str {LEGACY} }}",
    ]


def backend_lines(legacy: LegacyUpstream, timeout_ms: str, errors: Sequence[str] = ()) -> list[str]:
    """The legacy backend, rewriting as the facade's proxy does: hop-by-hop and
    ``Proxy-*`` headers dropped, ``Host`` of legacy, ``X-Forwarded-*``, legacy's base
    path; on the answers ``X-Served-By: legacy`` and a ``Location`` into legacy made
    relative to the facade. ``errors``: its own ``http-error`` lines."""
    server = f"    server legacy {legacy.address}"
    if legacy.tls:
        server += f" ssl verify required ca-file @system-ca sni str({legacy.host})"
    lines = [
        "backend legacy",
        "    retry-on conn-failure",
        "    retries 3",
        f"    timeout server {timeout_ms}",
        *errors,
        *(
            f"    http-request del-header {name}"
            for name in ("Keep-Alive", "TE", "Trailer", "Upgrade")
        ),
        "    http-request del-header proxy- -m beg",
        "    http-request set-header X-Forwarded-Host %[req.hdr(host)]",
        "    http-request set-header X-Forwarded-Proto http",
        f"    http-request set-header Host {legacy.host_header}",
    ]
    if legacy.prefix:
        lines.append(f"    http-request set-path {legacy.prefix}%[path]")
    lines.append("    http-response set-header X-Served-By legacy")
    if legacy.base_url:
        base = legacy.base_url
        lines += [
            "    http-response set-header Location / "
            f"if {{ res.hdr(Location) -m str {_quoted(base)} }}",
            "    http-response replace-header Location "
            f"{_quoted('^' + re.escape(base) + '(/.*)$')} '\\1'",
        ]
    lines += [server, ""]
    return lines


def map_lines(routing: Routing) -> list[MapLine]:
    """The map's lines for ``routing``: one per candidate of the facade's search, in its
    order; trailing ``legacy`` lines are left out (no line: legacy)."""
    lines = [
        (f"^(?:{'|'.join(sorted(c.methods))}){c.path_regex[1:]}", _backend(c, routing))
        for c in routing.matcher.search_order()
        if c.methods
    ]
    while lines and lines[-1][1] == LEGACY:
        lines.pop()
    return lines


def _backend(candidate: Candidate, routing: Routing) -> str:
    if candidate.key is None:  # the facade matches no route there: legacy
        return LEGACY
    if not candidate.exact:  # the facade may refuse the match: it decides
        return FACADE
    if candidate.key in routing.group_of:  # a write group's route: the facade holds its lock
        return FACADE
    mode = routing.modes.get(candidate.key, Mode.LEGACY)
    return LEGACY if mode is Mode.LEGACY else FACADE


def map_text(lines: Sequence[MapLine]) -> str:
    return "".join(f"{key} {value}\n" for key, value in lines)


def described(lines: Sequence[MapLine]) -> str:
    to_facade = sum(1 for _, backend in lines if backend == FACADE)
    return f"{to_facade} of {len(lines)} map lines to the facade, the rest to legacy"


@dataclass(frozen=True)
class DataPlaneRouting:
    """What the data plane needs to route by the route table.

    ``legacy_url``: where legacy listens; ``read()``: the routing now (raises when the
    table cannot be read); ``interval``: seconds between two reads; ``close()``:
    releases what ``read`` holds (called before the facade is forked, and at exit);
    ``metrics_path``: the facade's metrics path, always the facade's."""

    legacy_url: str
    read: Callable[[], Routing]
    interval: float = 0.5
    close: Callable[[], None] = lambda: None
    metrics_path: str = "/metrics"


def initial_lines(routing: DataPlaneRouting) -> list[MapLine]:
    """The map's lines as read now; everything to the facade when unreadable."""
    try:
        return map_lines(routing.read())
    except Exception as exc:  # noqa: BLE001 - the facade decides until it can be read
        log.warning(
            "route table unreadable at start (%s): every request goes to the facade",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        return list(EVERYTHING_TO_THE_FACADE)
    finally:
        routing.close()


class RuntimeAPI:
    """HAProxy's runtime API on its local socket (one command per connection)."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self._path = path
        self._timeout = timeout

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self._timeout)
            sock.connect(self._path)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace").strip()

    def replace_map(self, map_path: str, lines: Sequence[MapLine], chunk: int = 200) -> None:
        """Replace every line of the map at ``map_path`` in one step (a new version of
        the map, filled, then committed); raises RuntimeError when HAProxy refuses."""
        for key, value in lines:
            if not key or any(c.isspace() for c in key + value) or not value:
                raise ValueError(f"a map line HAProxy cannot hold: {key!r} {value!r}")
        answer = self.command(f"prepare map {map_path}")
        found = re.search(r"New version created: (\d+)", answer)
        if found is None:
            raise RuntimeError(f"HAProxy refused a new version of the map: {answer}")
        version = found.group(1)
        for start in range(0, len(lines), chunk):
            payload = map_text(lines[start : start + chunk])
            answer = self.command(f"add map @{version} {map_path} <<\n{payload}")
            if answer:
                raise RuntimeError(f"HAProxy refused the map's lines: {answer}")
        answer = self.command(f"commit map @{version} {map_path}")
        if answer:
            raise RuntimeError(f"HAProxy refused to commit the map: {answer}")


class Router:
    """Keeps HAProxy's map equal to the route table, every ``interval`` seconds."""

    def __init__(
        self,
        routing: DataPlaneRouting,
        map_path: Path,
        api: RuntimeAPI,
        current: Sequence[MapLine],
    ) -> None:
        self._routing = routing
        self._map_path = map_path
        self._api = api
        self._current = list(current)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> list[MapLine]:
        return list(self._current)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="data-plane-routing", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._routing.close()

    def sync(self) -> None:
        """Read the table once and replace the map when its lines changed."""
        try:
            wanted = map_lines(self._routing.read())
        except Exception as exc:  # noqa: BLE001 - keep the last routing, read again later
            log.warning(
                "route table unreadable, the data plane keeps its routing: %s",
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return
        if wanted == self._current:
            return
        self._api.replace_map(str(self._map_path), wanted)
        self._current = wanted
        self._map_path.write_text(map_text(wanted))
        log.info("data plane routing changed: %s", described(wanted))

    def _run(self) -> None:
        while not self._stop.wait(self._routing.interval):
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - logged; tried again next interval
                log.warning("data plane routing failed: %s", exc)
