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

Host names (against DNS rebinding): a page of another site whose name an
attacker points at this server's address would be same-origin with the
server in the browser's eyes, and could use the whole API. Its requests
name that site in their ``Host`` header, so the server answers only the host
names it knows (``HostPolicy``): localhost names, IP addresses, the HOST it
is bound to, and those the ALLOWED_HOSTS setting lists. Anything else gets
400 ``bad_host``, HTTP and Socket.IO alike (``guard_hosts``).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.types import StartResponse

from flask import Flask, Response, request

from .exceptions import BadRequest

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
        return bool(origin and (self.any or _normalise(origin) in self.origins))

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


LOCAL_NAMES = ("localhost",)
_PORT = re.compile(r":[0-9]*$")
_HOST_NAME = re.compile(r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$")


class HostPolicy:
    """The host names this server answers to (the ``Host`` header), against DNS rebinding.

    Always: localhost names and IP addresses (a rebinding attack needs a
    name the attacker owns; an address is nobody's name), plus the address
    the server is bound to when it is a name. ``allowed`` adds names,
    comma-separated: ``audio.example.com``, ``.example.com`` for it and every
    name under it, or ``*`` for any name.
    """

    def __init__(self, allowed: str | Iterable[str], *, bound: str = "") -> None:
        if isinstance(allowed, str):
            allowed = allowed.split(",")
        names = {_normalise_host(name) for name in [*allowed, bound, *LOCAL_NAMES]}
        self.any = "*" in names
        self.exact = frozenset(name for name in names if name and not name.startswith("."))
        self.suffixes = tuple(name for name in names if name.startswith("."))

    def allows(self, host: str | None) -> bool:
        """Whether a request whose ``Host`` header is host may be answered (None: no header)."""
        if host is None:
            return True  # HTTP/1.0 without Host: no browser, so no rebinding
        name = _host_name(host)
        if name is None:
            return False
        if self.any or name in self.exact or _is_address(name):
            return True
        return any(name.endswith(suffix) or name == suffix[1:] for suffix in self.suffixes)


def _normalise_host(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _host_name(host: str) -> str | None:
    """The name or address in a Host header, without its port; None if it is neither."""
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6]:port
        address, bracket, rest = host[1:].partition("]")
        if bracket and (rest == "" or _PORT.fullmatch(rest)) and _is_address(address):
            return address
        return None
    name = _normalise_host(_PORT.sub("", host))
    return name if _HOST_NAME.match(name) else None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def bad_host_message(host: str | None) -> str:
    """The message of a 400 bad_host: what was refused and what to set."""
    shown = (host or "")[:100].encode("ascii", "backslashreplace").decode()
    return (
        f"This server does not answer to the host name {shown!r}. Use its address or "
        "localhost, or add the name to the server's ALLOWED_HOSTS setting "
        "(AUDIO_ALLOWED_HOSTS, --allowed-hosts)."
    )


def guard_hosts(app: Flask, policy: HostPolicy) -> None:
    """Refuse requests for host names the policy does not allow: 400 bad_host, in JSON.

    Must run after Flask-SocketIO has wrapped the app: the check goes in
    front of both. A refused request, Socket.IO's included, is answered by
    Flask (without Socket.IO), so it gets the same JSON, headers and metrics
    as every other error.
    """
    with_socketio = app.wsgi_app
    flask_only = functools.partial(Flask.wsgi_app, app)  # Flask's own, without Socket.IO

    def check_host(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if policy.allows(environ.get("HTTP_HOST")):
            return with_socketio(environ, start_response)
        environ["audioserver.refused_host"] = True
        return flask_only(environ, start_response)

    app.wsgi_app = check_host  # type: ignore[method-assign]  # Flask's way to wrap its WSGI app

    @app.before_request
    def refuse_host() -> None:
        if request.environ.get("audioserver.refused_host"):
            raise BadRequest(bad_host_message(request.environ.get("HTTP_HOST")), code="bad_host")


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
