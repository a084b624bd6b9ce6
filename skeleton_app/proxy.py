"""Forwarding a request to the legacy system and its answer back, as faithfully as possible.

The upstream URL is always the configured base URL plus the request's path and query: the
request's Host header or an absolute-form request target can never send it elsewhere.
Hop-by-hop headers (RFC 9110 7.6.1) stay on their hop; bodies pass through undecoded
(``Content-Encoding`` kept) and responses are streamed; redirects are passed back, with a
``Location`` pointing into the legacy system rewritten to point at the facade.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import quote, urlsplit

import requests
from flask import Request, Response
from requests.adapters import HTTPAdapter
from werkzeug.datastructures import Headers

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
        url = self.base_url + quote(path, safe=_PATH_SAFE)
        query = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
        if query:
            url += "?" + quote(query, safe="/?:@!$&'()*+,;=-._~%")
        if urlsplit(url).netloc != self._netloc:  # cannot happen; never send elsewhere
            raise ValueError(f"refusing to proxy to {url!r}")
        return url

    def forward(self, request: Request) -> Response:
        url = self.upstream_url(request.path, request.query_string)
        try:
            upstream = self._session.request(
                request.method,
                url,
                headers=self._request_headers(request),
                data=request.get_data(cache=False) or None,
                allow_redirects=False,
                stream=True,
                timeout=self._timeout,
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
        return self._response(upstream)

    def close(self) -> None:
        self._session.close()

    def _request_headers(self, request: Request) -> dict[str, str]:
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

    def _response(self, upstream: requests.Response) -> Response:
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
        response = Response(
            _body(upstream),
            status=status or upstream.status_code,
            direct_passthrough=True,
        )
        response.headers = headers
        response.call_on_close(upstream.close)
        return response

    def _rewrite_location(self, location: str) -> str:
        """A redirect into the legacy system becomes a redirect into the facade."""
        if location == self.base_url or location.startswith(self.base_url + "/"):
            return location[len(self.base_url):] or "/"
        return location


def _body(upstream: requests.Response) -> Iterator[bytes]:
    try:
        yield from upstream.raw.stream(_CHUNK, decode_content=False)
    finally:
        upstream.close()
