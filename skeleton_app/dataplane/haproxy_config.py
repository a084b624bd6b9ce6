"""The HAProxy configuration of the data plane, rendered from the facade's settings.

HAProxy listens on the public address and holds the clients' connections; the facade
(gunicorn) listens on a private local address and sees only whole requests:

- ``option http-buffer-request``: a request reaches the facade only once its headers and
  its whole body are in HAProxy's buffer, so a slow client costs a buffer in HAProxy and
  never one of the facade's threads;
- ``timeout http-request``: a client that has not sent a whole request (headers and body)
  in that time gets 408 and is disconnected, however slowly it trickles bytes;
- limits: request line, header count and size, body size, answered 414, 431 and 413 by
  HAProxy itself; ``tune.bufsize`` is large enough to buffer the biggest allowed request
  whole, so nothing allowed is ever streamed to the facade slowly;
- every answer HAProxy writes itself is the kit's JSON error ``{"error", "detail"}`` with
  ``X-Served-By: proxy``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from skeleton_app.dataplane.routing import LegacyUpstream, backend_lines, frontend_lines

KiB = 1024
MiB = 1024 * KiB

SERVED_BY = "proxy"
"""``X-Served-By`` of the answers HAProxy writes itself (errors, limits, timeouts)."""


@dataclass(frozen=True)
class Limits:
    """What a request may hold; larger ones are refused by the data plane.

    ``request_line``: bytes of the request target (414 beyond); ``header_bytes``: bytes of
    all header lines together (431); ``header_fields``: number of header lines (431);
    ``body``: bytes of body, declared or chunked (413).
    """

    request_line: int = 8 * KiB
    header_bytes: int = 32 * KiB
    header_fields: int = 100
    body: int = MiB

    @property
    def buffer_size(self) -> int:
        """``tune.bufsize``: a whole allowed request (and one byte too many) fits."""
        return self.request_line + self.header_bytes + self.body + 64 * KiB


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``request``: to send a whole request (408 beyond); ``server``: for the facade
    to answer (longer than the facade's own upstream and new-system timeouts, so the facade
    answers its own 504 first); ``client``: of silence while a client reads an answer;
    ``keep_alive``: an idle client connection is kept; ``queue``: a request waits for a
    free facade thread (503 beyond); ``stop``: in-flight requests get on SIGTERM."""

    request: float = 10.0
    server: float = 17.0
    client: float = 30.0
    keep_alive: float = 60.0
    connect: float = 5.0
    queue: float = 10.0
    stop: float = 15.0

    @classmethod
    def for_facade(
        cls,
        request: float,
        upstream_timeout: float,
        new_timeout: float,
    ) -> Timeouts:
        answer = upstream_timeout + new_timeout
        return cls(request=request, server=answer + 5, queue=max(10.0, answer), stop=answer + 5)


@dataclass(frozen=True)
class Backend:
    """The facade behind HAProxy: its private address and how many requests it serves
    at once (gunicorn workers x threads); more wait in HAProxy's queue."""

    host: str
    port: int
    concurrency: int


ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad request", "the request is malformed or its headers do not fit the proxy buffer"),
    408: ("request timeout", "the whole request (headers and body) did not arrive in time"),
    500: ("internal server error", "the proxy failed to handle the request"),
    502: ("bad gateway", "the facade closed the connection or answered something invalid"),
    503: (
        "service unavailable",
        "the facade is not reachable or too busy to take the request in time",
    ),
    504: ("gateway timeout", "the facade did not answer in time"),
}
"""The errors HAProxy generates itself, as the kit's JSON bodies."""


_SPELLED = (
    "X-Served-By",
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Date",
    "Server",
    "Location",
    "Set-Cookie",
    "Cache-Control",
    "Connection",
    "Allow",
    "Retry-After",
    "Transfer-Encoding",
)


def error_body(error: str, detail: str) -> str:
    return json.dumps({"error": error, "detail": detail})


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _quoted(text: str) -> str:
    # HAProxy takes single-quoted words verbatim; the bodies are ours and hold no quote
    if "'" in text:
        raise ValueError(f"cannot quote {text!r} for HAProxy")
    return f"'{text}'"


def _answer(status: int, error: str, detail: str) -> str:
    return (
        f"status {status} content-type application/json "
        f"string {_quoted(error_body(error, detail))} hdr X-Served-By {SERVED_BY}"
    )


def render(
    bind: str,
    backend: Backend,
    *,
    limits: Limits | None = None,
    timeouts: Timeouts | None = None,
    max_connections: int = 4096,
    runtime_socket: str | None = None,
    legacy: LegacyUpstream | None = None,
    routes_map: str | None = None,
    legacy_timeout: float = 10.0,
    metrics_socket: str | None = None,
    metrics_path: str = "/metrics",
) -> str:
    """The text of ``haproxy.cfg``. ``bind``: the public address (``host:port``);
    ``runtime_socket``: a path for HAProxy's runtime API (admin level, mode 600). With
    ``legacy`` and ``routes_map`` (the map file of the facade's route matching, see
    :mod:`skeleton_app.dataplane.routing`), what the map gives to legacy goes straight
    to legacy. ``metrics_socket``: a path where HAProxy's Prometheus exporter answers
    (mode 600); the facade's ``metrics_path`` is always the facade's."""
    limits = limits or Limits()
    timeouts = timeouts or Timeouts()
    lines = [
        "# Rendered by strangler serve (skeleton_app/dataplane); edits are overwritten.",
        "global",
        f"    maxconn {max_connections}",
        f"    tune.bufsize {limits.buffer_size}",
        # HAProxy counts the request line; parse more than allowed so the excess gets 431
        f"    tune.http.maxhdr {limits.header_fields * 2 + 1}",
        f"    hard-stop-after {_ms(timeouts.stop)}",
        "    log stderr format short local0 info",
    ]
    # HTTP/1 header names are case-insensitive, but people read (and grep) the answers:
    # keep the usual spelling instead of HAProxy's lower case
    lines += [f"    h1-case-adjust {name.lower()} {name}" for name in _SPELLED]
    if runtime_socket:
        lines.append(f"    stats socket {runtime_socket} mode 600 level admin")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal",
        "    option http-buffer-request",
        "    option forwardfor",
        f"    timeout http-request {_ms(timeouts.request)}",
        f"    timeout client {_ms(timeouts.client)}",
        f"    timeout http-keep-alive {_ms(timeouts.keep_alive)}",
        f"    timeout connect {_ms(timeouts.connect)}",
        f"    timeout server {_ms(timeouts.server)}",
        f"    timeout queue {_ms(timeouts.queue)}",
    ]
    lines += [f"    http-error {_answer(status, *ERRORS[status])}" for status in sorted(ERRORS)]
    lines += [
        "",
        "frontend public",
        f"    bind {bind}",
        f"    maxconn {max_connections}",
        "    option h1-case-adjust-bogus-client",
        f"    http-request return {_answer(414, 'request uri too large', f'the request target is longer than {limits.request_line} bytes')}"  # noqa: E501
        f" if {{ url,length gt {limits.request_line} }}",
        f"    http-request return {_answer(431, 'request header fields too large', f'more than {limits.header_fields} header fields')}"  # noqa: E501
        f" if {{ req.fhdr_cnt gt {limits.header_fields} }}",
        f"    http-request return {_answer(431, 'request header fields too large', f'the header fields are larger than {limits.header_bytes} bytes together')}"  # noqa: E501
        f" if {{ req.hdrs,length gt {limits.header_bytes} }}",
        f"    http-request return {_answer(413, 'request entity too large', f'the request body is larger than {limits.body} bytes')}"  # noqa: E501
        f" if {{ req.body_size gt {limits.body} }}",
    ]
    routed = legacy is not None and routes_map is not None
    if routed:
        assert routes_map is not None
        lines += frontend_lines(routes_map, metrics_path)
    lines += [
        "    default_backend facade",
        "",
        "backend facade",
        "    retry-on conn-failure",
        "    retries 3",
        f"    server facade {backend.host}:{backend.port} maxconn {backend.concurrency}",
        "",
    ]
    if routed:
        assert legacy is not None
        errors = {
            502: ("bad gateway", "the legacy system closed the connection or answered badly"),
            503: ("service unavailable", "the legacy system could not be reached"),
            504: (
                "gateway timeout",
                f"the legacy system did not answer within {legacy_timeout:g} s",
            ),
        }
        lines += backend_lines(
            legacy,
            _ms(legacy_timeout),
            [f"    http-error {_answer(status, *errors[status])}" for status in sorted(errors)],
        )
    if metrics_socket:
        lines += [
            "frontend metrics",
            "    # HAProxy's counters in Prometheus' format, for the facade's /metrics",
            f"    bind unix@{metrics_socket} mode 600",
            "    http-request use-service prometheus-exporter",
            "",
        ]
    return "\n".join(lines)
