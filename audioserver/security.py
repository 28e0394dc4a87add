"""Security headers on every answer, and cross-origin access for the origins the settings allow.

Every answer Flask makes carries a Content-Security-Policy that lets the
page load scripts, styles, images, media and connections only from the
server itself (no inline script or style, no plugins, no framing), plus
``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
``X-Frame-Options: DENY``. Socket.IO's own answers (``/socket.io/``) are
made by the Engine.IO middleware before Flask sees the request, so they
carry none of these; Engine.IO checks their ``Origin`` itself.

Cross-origin access: by default only the server's own origin (browsers
need nothing from the server for that). The CORS_ORIGINS setting lists
other origins, comma-separated, or ``*`` for any; it applies both to HTTP
(``Access-Control-Allow-Origin``, preflights) and to Socket.IO connections
(``socketio_origins``), which otherwise accept only the same origin.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask, Response, request

# Headers a cross-origin script may read: the result's name and range, the new task's address,
# how long to wait when the server is busy.
EXPOSED_HEADERS = "Content-Disposition, Content-Range, Accept-Ranges, Location, Retry-After"
ALLOWED_REQUEST_HEADERS = "Content-Type, Range"
PREFLIGHT_MAX_AGE = 600  # seconds a browser may keep a preflight's answer

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

STATIC_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def content_security_policy(host: str) -> str:
    """Return the CSP for a request to host: only this server, no inline code, no framing."""
    connect = "'self'"
    if _HOST.match(host):
        # CSP3 browsers count ws:/wss: to the same host as 'self'; older ones need them named.
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob:",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ]
    )


class OriginPolicy:
    """The origins, besides the server's own, allowed to use the API from a browser."""

    def __init__(self, origins: str | Iterable[str]) -> None:
        if isinstance(origins, str):
            origins = origins.split(",")
        self.origins = frozenset(_normalise(origin) for origin in origins if origin.strip())
        self.any = "*" in self.origins

    def allows(self, origin: str | None) -> bool:
        """Whether a cross-origin request from origin may be answered to the browser."""
        return bool(origin) and (self.any or _normalise(origin) in self.origins)

    def socketio_origins(self) -> str | Callable[[str | None, Mapping[str, Any]], bool] | None:
        """Flask-SocketIO's ``cors_allowed_origins``: None (same origin) unless origins are set.

        A list would replace the same-origin default, so the page served by this
        server could no longer connect; a callable allows both.
        """
        if self.any:
            return "*"
        if not self.origins:
            return None

        def allowed(origin: str | None, environ: Mapping[str, Any]) -> bool:
            return self.allows(origin) or (origin is not None and origin in _own_origins(environ))

        return allowed


def _normalise(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _own_origins(environ: Mapping[str, Any]) -> list[str]:
    """The server's origin as the request names it (directly, and as a proxy forwarded it)."""
    if "HTTP_HOST" not in environ:
        return []
    scheme, host = environ.get("wsgi.url_scheme", "http"), environ["HTTP_HOST"]
    origins = [f"{scheme}://{host}"]
    forwarded_scheme = environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip()
    forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
    origins.append(f"{forwarded_scheme}://{forwarded_host}")
    return origins


def _add_cors_headers(response: Response, policy: OriginPolicy) -> None:
    origin = request.headers.get("Origin")
    if not policy.allows(origin):
        return
    headers = response.headers
    if policy.any:
        headers["Access-Control-Allow-Origin"] = "*"
    else:
        headers["Access-Control-Allow-Origin"] = origin
        headers.add("Vary", "Origin")
    headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        headers["Access-Control-Allow-Methods"] = headers.get("Allow", "GET, POST, DELETE")
        headers["Access-Control-Allow-Headers"] = ALLOWED_REQUEST_HEADERS
        headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)


def init_app(app: Flask) -> OriginPolicy:
    """Add the security and CORS headers to every answer of app; return its origin policy."""
    policy = OriginPolicy(app.config["CORS_ORIGINS"])
    app.extensions["origin_policy"] = policy

    @app.after_request
    def add_security_headers(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", content_security_policy(request.host))
        for name, value in STATIC_HEADERS.items():
            headers.setdefault(name, value)
        _add_cors_headers(response, policy)
        return response

    return policy
