"""Forwarding a request to the legacy system and its answer back, as faithfully as possible.

The upstream URL is always the configured base URL plus the request's path and query: the
request's Host header or an absolute-form request target can never send it elsewhere, and a
path with ``.``/``..`` segments (even percent-encoded ones), which the HTTP client would
resolve and so climb out of the base URL's path, is refused before it gets here. Hop-by-hop
headers (RFC 9110 7.6.1) stay on their hop; bodies pass through undecoded
(``Content-Encoding`` kept) and are streamed both ways (a request body is only read into
memory when the facade must send it twice, for a shadow comparison); redirects are passed
back, not followed, with a ``Location`` pointing into the legacy system rewritten to point
at the facade.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from http.cookiejar import DefaultCookiePolicy
from typing import IO, Any
from urllib.parse import quote, urlsplit

import requests
from flask import Request, Response
from requests.adapters import HTTPAdapter
from werkzeug.datastructures import Headers

from skeleton_app.compare import Answer
from skeleton_app.errors import json_error

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Not hop-by-hop, but the facade sets them itself: Host and Content-Length from the actual
# upstream request, Expect is answered by the facade's own server.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
# The facade's server writes its own Date and Server; X-Served-By is the facade's.
_NOT_RETURNED = HOP_BY_HOP | {"date", "server", "x-served-by"}

_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_CHUNK = 64 * 1024

Capture = Callable[[Answer | None, str | None], None]
"""Called once the legacy answer was streamed to the client: ``(answer, None)`` with the
whole answer, or ``(None, reason)`` when it could not be kept (``too_large``,
``incomplete``)."""


class BodyTooLarge(ValueError):
    """An answer bigger than the comparison limit."""


def _connection_tokens(value: str | None) -> set[str]:
    """Header names listed in a Connection header are hop-by-hop too."""
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}


def _is_hop_by_hop(name: str, extra: set[str]) -> bool:
    lower = name.lower()
    return lower in HOP_BY_HOP or lower.startswith("proxy-") or lower in extra


def validate_base_url(base_url: str) -> str:
    """``base_url`` without a trailing slash; ValueError unless ``http(s)://host[:port][/path]``."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"legacy URL must be http(s)://host[:port][/path], got {base_url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"legacy URL must be http(s)://host[:port][/path], got {base_url!r}")
    return base_url.rstrip("/")


class LegacyProxy:
    """Forwards requests to the legacy system at ``base_url`` over one requests Session.

    The session keeps no cookies (clients' cookies must never leak between them) and
    ignores the environment (no proxies or .netrc credentials are added).
    """

    def __init__(self, base_url: str, timeout: float = 10.0, pool_size: int = 16) -> None:
        self.base_url = validate_base_url(base_url)
        self._netloc = urlsplit(self.base_url).netloc
        self._timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.headers.clear()
        self._session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def upstream_url(self, path: str, query_string: bytes | str) -> str:
        """The legacy URL for a request path (as decoded by the WSGI server) and raw query."""
        if not path.startswith("/"):
            path = "/" + path
        if has_dot_segments(path):
            raise ValueError(f"refusing to proxy a path with dot segments: {path!r}")
        url = self.base_url + quote(path, safe=_PATH_SAFE)
        query = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
        if query:
            url += "?" + quote(query, safe="/?:@!$&'()*+,;=-._~%")
        if urlsplit(url).netloc != self._netloc:  # cannot happen; never send elsewhere
            raise ValueError(f"refusing to proxy to {url!r}")
        return url

    def forward(
        self,
        request: Request,
        *,
        body: bytes | None = None,
        capture: Capture | None = None,
        capture_limit: int = 1024 * 1024,
        observe: Callable[[float], None] | None = None,
    ) -> Response:
        """Proxy ``request``; its body is streamed unless ``body`` (already read) is given.

        ``capture`` gets the whole answer once it was streamed to the client (see
        ``Capture``); ``observe`` the seconds until legacy's response headers arrived.
        """
        url = self.upstream_url(request.path, request.query_string)
        started = time.perf_counter()
        try:
            upstream = self._send(
                request.method,
                url,
                self.request_headers(request),
                body if body is not None else _request_body(request),
            )
        except requests.Timeout:
            log.warning("legacy timeout after %ss: %s %s", self._timeout, request.method, url)
            return json_error(
                504,
                "gateway timeout",
                f"the legacy system did not answer within {self._timeout:g} s",
            )
        except requests.ConnectionError as exc:
            log.warning("legacy unreachable: %s %s: %s", request.method, url, exc)
            return json_error(502, "bad gateway", "the legacy system could not be reached")
        except requests.RequestException as exc:
            log.warning("cannot forward %s %s: %s", request.method, url, exc)
            return json_error(
                502, "bad gateway", "the request could not be forwarded to the legacy system"
            )
        if observe is not None:
            observe(time.perf_counter() - started)
        return self._response(upstream, started, capture, capture_limit)

    def fetch(
        self,
        method: str,
        path: str,
        query_string: bytes | str,
        headers: dict[str, str],
        body: bytes,
        limit: int = 1024 * 1024,
    ) -> Answer:
        """One whole answer from legacy (for an A/A comparison); raises requests' errors
        and BodyTooLarge."""
        url = self.upstream_url(path, query_string)
        started = time.perf_counter()
        with self._send(method, url, headers, body or None) as upstream:
            chunks: list[bytes] = []
            size = 0
            for chunk in upstream.raw.stream(_CHUNK, decode_content=False):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"legacy's answer is larger than {limit} bytes")
                chunks.append(chunk)
            return Answer(
                upstream.status_code,
                tuple(upstream.raw.headers.items()),
                b"".join(chunks),
                time.perf_counter() - started,
            )

    def _send(self, method: str, url: str, headers: dict[str, str], data: Any) -> requests.Response:
        # Session.send, not Session.request: a request needs none of what request() merges
        # in (session headers, cookies, auth, environment proxies); skipping it saves about
        # a tenth of the facade's CPU per proxied request (see docs/benchmarks.md)
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=url, headers=headers, data=data)
        return self._session.send(
            prepared, allow_redirects=False, stream=True, timeout=self._timeout
        )

    def close(self) -> None:
        self._session.close()

    def request_headers(self, request: Request) -> dict[str, str]:
        """The headers sent to legacy for ``request``."""
        extra = _connection_tokens(request.headers.get("Connection"))
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            if name.lower() in _NOT_FORWARDED or _is_hop_by_hop(name, extra):
                continue
            separator = "; " if name.lower() == "cookie" else ", "
            headers[name] = f"{headers[name]}{separator}{value}" if name in headers else value
        forwarded_for = request.headers.get("X-Forwarded-For")
        client = request.remote_addr or "unknown"
        headers["X-Forwarded-For"] = f"{forwarded_for}, {client}" if forwarded_for else client
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        return headers

    def _response(
        self,
        upstream: requests.Response,
        started: float,
        capture: Capture | None,
        capture_limit: int,
    ) -> Response:
        raw_headers = list(upstream.raw.headers.items())
        extra = _connection_tokens(upstream.headers.get("Connection"))
        headers = Headers()
        for name, value in raw_headers:
            if name.lower() in _NOT_RETURNED or _is_hop_by_hop(name, extra):
                continue
            if name.lower() == "location":
                value = self._rewrite_location(value)
            headers.add(name, value)
        status = f"{upstream.status_code} {upstream.reason}" if upstream.reason else None
        body = (
            _body(upstream)
            if capture is None
            else _captured_body(upstream, raw_headers, started, capture, capture_limit)
        )
        response = Response(body, status=status or upstream.status_code, direct_passthrough=True)
        response.headers = headers
        response.call_on_close(upstream.close)
        return response

    def _rewrite_location(self, location: str) -> str:
        """A redirect into the legacy system becomes a redirect into the facade."""
        if location == self.base_url or location.startswith(self.base_url + "/"):
            return location[len(self.base_url) :] or "/"
        return location


def _body(upstream: requests.Response) -> Iterator[bytes]:
    try:
        yield from upstream.raw.stream(_CHUNK, decode_content=False)
    finally:
        upstream.close()


def _captured_body(
    upstream: requests.Response,
    raw_headers: list[tuple[str, str]],
    started: float,
    capture: Capture,
    limit: int,
) -> Iterator[bytes]:
    """Stream the body to the client and keep a copy (up to ``limit`` bytes) for ``capture``.

    ``capture`` is called after the last chunk went out, so the client never waits for it.
    """
    kept: list[bytes] = []
    size = 0
    complete = False
    try:
        for chunk in upstream.raw.stream(_CHUNK, decode_content=False):
            size += len(chunk)
            if size <= limit:
                kept.append(chunk)
            yield chunk
        complete = True
    finally:
        upstream.close()
        if not complete:
            capture(None, "incomplete")
        elif size > limit:
            capture(None, "too_large")
        else:
            elapsed = time.perf_counter() - started
            capture(Answer(upstream.status_code, tuple(raw_headers), b"".join(kept), elapsed), None)


class _SizedStream:
    """A request body of known length, read in chunks as legacy takes it (not buffered)."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self._stream = stream
        self._length = length

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size if size is not None and size >= 0 else -1)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_CHUNK):
            yield chunk


def _chunked(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _request_body(request: Request) -> _SizedStream | Iterator[bytes] | None:
    """The request body as a stream: sized when the client said how long it is, chunked
    when the client sent it chunked (and its server ends it: ``wsgi.input_terminated``),
    None when there is none. A request the client sent without a body (a plain GET or
    HEAD) goes to legacy without one and without framing headers: an empty chunked body
    on a GET is read by some servers as the start of the next request."""
    length = request.content_length
    if length:
        return _SizedStream(request.stream, length)
    if length is None and sent_chunked(request) and request.environ.get("wsgi.input_terminated"):
        return _chunked(request.stream)
    return None


def sent_chunked(request: Request) -> bool:
    """Whether the client framed its request body with ``Transfer-Encoding: chunked``."""
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def path_problem(raw_path: str) -> str | None:
    """Why a request path (WSGI ``PATH_INFO``: its bytes as latin-1) is refused, or None.

    A path that is not UTF-8, or holds control characters once decoded (NUL, CR, LF ...),
    names nothing a route or the legacy system can serve; passing it on only lets it break
    what stores or logs it.
    """
    try:
        path = raw_path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return "the path is not UTF-8"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path):
        return "the path holds control characters"
    return None


def has_dot_segments(path: str) -> bool:
    """Whether a (decoded) path has ``.`` or ``..`` segments, which HTTP clients resolve."""
    return any(segment in (".", "..") for segment in path.split("/"))
