"""The operator console at ``/_strangler/ui``: static HTML, JavaScript and CSS.

The page holds no data and needs no token to load: its script asks the admin API for
every figure, sending the admin token the operator typed into the login form as
``Authorization: Bearer`` (kept in the tab's ``sessionStorage``, never in a URL or a
cookie, so a forged cross-site request carries no credential: there is no CSRF surface).
The files are a fixed list shipped in the package (``skeleton_app/static``), served
with a Content-Security-Policy that allows only these files (no inline script or style,
no other origin), ``X-Frame-Options: DENY`` and ``nosniff``. The chart library, uPlot
(MIT licence), is vendored under ``static/vendor/uplot``: no build step, no CDN.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from flask import Response
from werkzeug.exceptions import NotFound

from skeleton_app.patterns import RESERVED_PREFIX

PREFIX = f"{RESERVED_PREFIX}ui"

FILES: dict[str, tuple[str, str]] = {
    "": ("console.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
    "/vendor/uplot/uPlot.iife.min.js": (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
    ),
    "/vendor/uplot/uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    "/vendor/uplot/LICENSE": ("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
}
"""Path under ``/_strangler/ui`` -> (file under ``skeleton_app/static``, content type)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def serves(path: str) -> bool:
    """Whether ``path`` is the console or one of its files."""
    return path == PREFIX or path == f"{PREFIX}/" or path.startswith(f"{PREFIX}/")


def page(path: str) -> Response:
    """The console file at ``path`` with its security headers; 404 for any other."""
    name = path[len(PREFIX) :].rstrip("/") if path != f"{PREFIX}/" else ""
    found = FILES.get(name)
    if found is None:
        raise NotFound(f"no console file at {path}")
    file, content_type = found
    response = Response(_read(file), content_type=content_type)
    response.headers.update(SECURITY_HEADERS)
    return response


@cache
def _read(file: str) -> bytes:
    return resources.files("skeleton_app").joinpath("static", *file.split("/")).read_bytes()
