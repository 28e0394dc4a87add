"""Security headers on every answer; cross-origin access to HTTP and Socket.IO as configured."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
import requests

from audioserver.security import HostPolicy, OriginPolicy, content_security_policy

EVIL = "https://evil.example"
FRIEND = "https://app.example"
POLLING = "/socket.io/?EIO=4&transport=polling"


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/static/style.css"),
        ("GET", "/healthz"),
        ("GET", "/pipeline/steps"),
        ("GET", "/openapi.json"),
        ("GET", "/tasks/nope"),
        ("POST", "/stop-processing"),
        ("PUT", "/upload"),
        ("GET", "/no/such/page"),
        ("OPTIONS", "/upload"),
    ],
)
def test_every_answer_has_the_security_headers(client, method, path):
    response = client.open(path, method=method)
    response.close()
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Content-Security-Policy" in response.headers


def test_the_policy_allows_only_this_server_and_no_inline_code(client):
    header = client.get("/").headers["Content-Security-Policy"]
    directives = csp_directives(header)
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["img-src"] == ["'self'", "data:", "blob:"]
    assert directives["media-src"] == ["'self'", "blob:"]
    assert directives["connect-src"] == ["'self'", "ws://localhost", "wss://localhost"]
    assert directives["object-src"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert "unsafe" not in header


def test_websocket_sources_name_the_host_with_its_port_and_only_a_plain_host():
    assert "ws://127.0.0.1:5001 wss://127.0.0.1:5001" in content_security_policy("127.0.0.1:5001")
    assert "ws://[::1]:5001" in content_security_policy("[::1]:5001")
    injected = content_security_policy("evil; script-src *")
    assert csp_directives(injected)["connect-src"] == ["'self'"]
    assert "script-src *" not in injected


class InlineCode(HTMLParser):
    """Finds what the page's CSP would block: inline scripts, styles and event handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and "src" not in dict(attrs):
            self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.found.append(f"{name}= on <{tag}>")
            if value and re.match(r"\s*javascript:", value, re.I):
                self.found.append(f"a javascript: URL on <{tag}>")


def test_the_page_has_nothing_its_policy_would_block(client):
    parser = InlineCode()
    parser.feed(client.get("/").get_data(as_text=True))
    assert parser.found == []


# -- cross-origin HTTP -------------------------------------------------------------------------


def test_by_default_no_other_origin_is_allowed(client):
    response = client.get("/healthz", headers={"Origin": EVIL})
    assert response.status_code == 200  # the server answers; the browser withholds it
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options(
        "/stop-processing",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers


def test_a_configured_origin_may_call_the_api(make_app):
    client = make_app(CORS_ORIGINS=f"{FRIEND}, https://other.example/").test_client()
    response = client.get("/healthz", headers={"Origin": FRIEND})
    assert response.headers["Access-Control-Allow-Origin"] == FRIEND
    assert "Origin" in response.headers.get_all("Vary")
    assert "Content-Disposition" in response.headers["Access-Control-Expose-Headers"]
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
    other = client.get("/healthz", headers={"Origin": "https://other.example"})
    assert other.headers["Access-Control-Allow-Origin"] == "https://other.example"
    refused = client.get("/healthz", headers={"Origin": EVIL})
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_a_configured_origin_gets_its_preflight_answered(make_app):
    client = make_app(CORS_ORIGINS=FRIEND).test_client()
    preflight = client.options(
        "/stop-processing",
        headers={
            "Origin": FRIEND,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == FRIEND
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    delete = client.options(
        "/tasks/abc", headers={"Origin": FRIEND, "Access-Control-Request-Method": "DELETE"}
    )
    assert "DELETE" in delete.headers["Access-Control-Allow-Methods"]


def test_a_star_allows_any_origin(make_app):
    client = make_app(CORS_ORIGINS="*").test_client()
    response = client.get("/healthz", headers={"Origin": EVIL})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    ("setting", "origin", "allowed"),
    [
        ("", FRIEND, False),
        ("", None, False),
        (FRIEND, FRIEND, True),
        (f"{FRIEND}/", FRIEND, True),
        (f" {FRIEND.upper()} ,https://b.example", FRIEND, True),
        (FRIEND, "https://app.example.evil.example", False),
        (FRIEND, "http://app.example", False),
        (FRIEND, "null", False),
        ("*", "null", True),
        (["https://b.example", FRIEND], FRIEND, True),
    ],
)
def test_origin_policy(setting, origin, allowed):
    assert OriginPolicy(setting).allows(origin) is allowed


# -- cross-origin Socket.IO --------------------------------------------------------------------


def socketio_handshake(url: str, origin: str | None) -> requests.Response:
    """A raw Engine.IO long-polling handshake, as a browser on origin would send it."""
    headers = {"Origin": origin} if origin else {}
    return requests.get(url + POLLING, headers=headers, timeout=10)


def opened(response: requests.Response) -> bool:
    return response.status_code == 200 and response.text.startswith('0{"sid"')


def test_socketio_refuses_other_origins_by_default(live_server):
    refused = socketio_handshake(live_server.url, EVIL)
    assert refused.status_code == 400
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert opened(socketio_handshake(live_server.url, live_server.url))  # the page's own origin
    assert opened(socketio_handshake(live_server.url, None))  # scripts send no Origin


def test_socketio_accepts_a_configured_origin_and_still_its_own(make_server):
    server = make_server(CORS_ORIGINS=FRIEND)
    allowed = socketio_handshake(server.url, FRIEND)
    assert opened(allowed)
    assert allowed.headers["Access-Control-Allow-Origin"] == FRIEND
    assert opened(socketio_handshake(server.url, server.url))
    assert socketio_handshake(server.url, EVIL).status_code == 400


def test_socketio_accepts_any_origin_with_a_star(make_server):
    server = make_server(CORS_ORIGINS="*")
    assert opened(socketio_handshake(server.url, EVIL))


# -- host names (DNS rebinding) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "bound", "host", "allows"),
    [
        ("", "127.0.0.1", "localhost:5001", True),
        ("", "127.0.0.1", "LOCALHOST", True),
        ("", "127.0.0.1", "127.0.0.1:5001", True),
        ("", "0.0.0.0", "192.168.1.20:5001", True),  # an address is nobody's name
        ("", "127.0.0.1", "[::1]:5001", True),
        ("", "127.0.0.1", None, True),  # no Host header: no browser
        ("", "127.0.0.1", "evil.example:5001", False),
        ("", "127.0.0.1", "localhost.evil.example", False),
        ("", "127.0.0.1", "127.0.0.1.nip.io", False),
        ("", "127.0.0.1", "", False),
        ("", "127.0.0.1", "[evil.example]:5001", False),
        ("", "127.0.0.1", "[::1", False),
        ("", "127.0.0.1", "a b", False),
        ("", "127.0.0.1", "evil.example:80@localhost", False),
        ("", "studio.lan", "studio.lan:5001", True),  # the name the server is bound to
        ("audio.example.com", "127.0.0.1", "audio.example.com", True),
        ("audio.example.com", "127.0.0.1", "audio.example.com.:443", True),
        ("audio.example.com", "127.0.0.1", "x.audio.example.com", False),
        (" .example.com , other.example", "127.0.0.1", "a.b.example.com", True),
        (".example.com", "127.0.0.1", "example.com", True),
        (".example.com", "127.0.0.1", "badexample.com", False),
        (["a.example", "b.example"], "127.0.0.1", "b.example", True),
        ("*", "127.0.0.1", "anything.example", True),
        ("*", "127.0.0.1", "not a host", False),
    ],
)
def test_host_policy(allowed, bound, host, allows):
    assert HostPolicy(allowed, bound=bound).allows(host) is allows


def test_another_host_name_is_400_bad_host_with_the_security_headers(client):
    response = client.get("/healthz", headers={"Host": "rebound.evil.example"})
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_host"
    assert "'rebound.evil.example'" in response.get_json()["message"]
    assert response.headers["X-Frame-Options"] == "DENY"
    page = client.get("/", headers={"Host": "rebound.evil.example"})
    assert page.status_code == 400 and page.is_json
    assert client.get("/healthz", headers={"Host": "localhost:5001"}).status_code == 200


def test_allowed_hosts_setting_adds_names(make_app):
    client = make_app(ALLOWED_HOSTS="audio.example.com").test_client()
    assert client.get("/healthz", headers={"Host": "audio.example.com"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "other.example.com"}).status_code == 400
