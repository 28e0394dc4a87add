"""Hostile clients against a real server: bounded memory, a short log, JSON answers, no 500.

Each test reproduces an attack over loopback, in a few seconds: binary
attachments a client announces and sends, malformed Socket.IO and Engine.IO
packets, a flood of them, a page of a rebound domain, requests Werkzeug's
own parser refuses, and JSON nested or sized to break a parser.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from pathlib import Path

import pytest
import requests
import websocket
from helpers import ServerProcess, music, write_wav

from audioserver.errors import CLIENT_FAULTS
from audioserver.events import MAX_MESSAGE_BYTES, PROTOCOL_ERRORS_BEFORE_CLOSE

EVIL_HOST = "rebound.evil.example"


class RawSocket:
    """A WebSocket speaking Engine.IO and Socket.IO by hand, to send what no library would."""

    def __init__(self, url: str) -> None:
        address = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(address, timeout=10)
        assert self.ws.recv().startswith('0{"sid"')  # Engine.IO open
        self.ws.send("40")
        assert self.ws.recv().startswith('40{"sid"')  # connected to the namespace

    def send_all(self, messages: list[str | bytes]) -> int:
        """Send messages until the server has closed the connection; return how many went."""
        sent = 0
        try:
            for message in messages:
                self.ws.send(message, opcode=0x2 if isinstance(message, bytes) else 0x1)
                sent += 1
        except (OSError, websocket.WebSocketException):
            pass
        return sent

    def closed_by_server(self) -> bool:
        """Wait for the server to close the connection (True), or to stay silent for 10 s."""
        try:
            while True:
                opcode, _ = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return True
        except websocket.WebSocketTimeoutException:
            return False
        except (OSError, websocket.WebSocketException):
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close(timeout=0.2)
        self.ws.shutdown()  # the socket too, whatever state the server left it in


def resident_mb(server: ServerProcess) -> float:
    """The server process's resident memory now (Linux VmRSS)."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.fixture
def server(make_server, caplog):
    """A live server; its log is caplog, from INFO, with the client fault lines' budget full."""
    caplog.set_level(logging.INFO)
    CLIENT_FAULTS.reset()
    return make_server(WORKERS=1)


@pytest.fixture
def connect():
    """Open RawSockets to a server; close them after the test."""
    sockets = []

    def open_socket(url: str) -> RawSocket:
        sockets.append(RawSocket(url))
        return sockets[-1]

    yield open_socket
    for raw in sockets:
        raw.close()


def lines(caplog, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


def wait_for_log(caplog, text: str, *, count: int = 1, timeout: float = 10) -> None:
    """Wait until the log has count lines containing text."""
    deadline = time.monotonic() + timeout
    while sum(text in record.getMessage() for record in caplog.records) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log: {caplog.text[-3000:]}"
        time.sleep(0.02)  # logging gives no signal when a record arrives


def assert_no_traceback(caplog) -> None:
    assert [record for record in caplog.records if record.exc_info] == []
    assert lines(caplog, logging.ERROR) == []


# -- binary attachments and the memory of one WebSocket ---------------------------------------


def test_announced_binary_attachments_close_the_connection_and_cost_no_memory(tmp_path):
    with ServerProcess(log=tmp_path / "server.log", log_level="INFO", workers=1) as server:
        before = resident_mb(server)
        for frame_kb in (60, 900):  # under and over the message limit
            raw = RawSocket(server.url)
            frames = [bytes(frame_kb * 1024)] * (150 * 1024 // frame_kb)  # 150 MB if kept
            sent = raw.send_all(['459999999-["subscribe",{}]', *frames])
            raw.close()
            assert sent < len(frames) // 4  # the server closed the connection early on
        assert resident_mb(server) - before < 30
        assert requests.get(f"{server.url}/healthz", timeout=10).ok
        log = server.log.read_text()
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert len(warnings) == 2
    assert all("binary event" in line and "closing the connection" in line for line in warnings)


def test_a_message_over_the_limit_closes_the_connection(server, connect, caplog):
    raw = connect(server.url)
    raw.send_all(["42" + "[" * 100_000 + "]" * 100_000])  # 200 KB, 100,000 deep
    assert raw.closed_by_server()
    wait_for_log(caplog, "disconnected")
    [warning] = lines(caplog, logging.WARNING)
    assert f"a message over {MAX_MESSAGE_BYTES} bytes" in warning


@pytest.mark.parametrize(
    "message", [b"\x00\x01binary", "", "x", "b!!!"], ids=["binary", "empty", "x", "base64"]
)
def test_a_websocket_message_that_is_not_engineio_closes_the_connection(
    server, connect, caplog, message
):
    raw = connect(server.url)
    raw.send_all([message])
    assert raw.closed_by_server()
    wait_for_log(caplog, "disconnected")
    [warning] = lines(caplog, logging.WARNING)
    assert "closing the connection" in warning
    assert_no_traceback(caplog)


# -- malformed Socket.IO packets: one line, the connection closed, no traceback ----------------

MALFORMED = {
    "truncated JSON": '42["x",{',
    "null": "42null",
    "5,000 digits": '42["subscribe",{"task_id":"a","from_index":' + "1" * 5000 + "}]",
    "10,000 deep": "42" + "[" * 10_000 + "]" * 10_000,
    "no event name": "42[5]",
    "a reserved event": '42["disconnect"]',
    "an ack": "43[1]",
    "unknown packet type": "49",
}


@pytest.mark.parametrize("packet", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_packets_cost_one_line_and_close_the_connection(server, connect, caplog, packet):
    raw = connect(server.url)
    raw.send_all([packet] * (PROTOCOL_ERRORS_BEFORE_CLOSE - 1))
    raw.ws.send('420["subscribe",{"task_id":"nope"}]')  # still served between errors
    assert json.loads(raw.ws.recv()[3:])[0]["error"] == "task_not_found"
    raw.send_all([packet])
    assert raw.closed_by_server()
    wait_for_log(caplog, "disconnected (server disconnect)")
    [warning] = lines(caplog, logging.WARNING)
    assert f"closed at {PROTOCOL_ERRORS_BEFORE_CLOSE} errors" in warning
    assert_no_traceback(caplog)


def test_a_flood_of_bad_packets_writes_a_few_lines(server, connect, caplog):
    bad = "42" + "[" * 8000 + "]" * 8000  # 16 KB each
    for _ in range(40):  # 40 connections, 3 bad packets each
        raw = connect(server.url)
        raw.send_all([bad] * PROTOCOL_ERRORS_BEFORE_CLOSE)
        assert raw.closed_by_server()
    wait_for_log(caplog, "disconnected (server disconnect)", count=40)
    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == CLIENT_FAULTS.burst
    assert sum(len(line) for line in warnings) < 3000  # 640 KB sent
    assert_no_traceback(caplog)


def polling_session(url: str) -> str:
    """A Socket.IO session over long-polling; return its address for POSTs."""
    base = f"{url}/socket.io/?EIO=4&transport=polling"
    eio_sid = json.loads(requests.get(base, timeout=10).text[1:])["sid"]
    session = f"{base}&sid={eio_sid}"
    assert requests.post(session, data="40", timeout=10).text == "OK"
    assert requests.get(session, timeout=10).text.startswith('40{"sid"')
    return session


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"x", "packet of type 'x'"),
        (b"\xff\xfe", "not UTF-8"),
        (b"bAAAA", "packet of type 'b'"),  # a binary attachment
        (b"6", "packet of type '6'"),  # python-engineio would wait for a poll to close
        ("\x1e".join(["3"] * 20).encode(), "more than 16 packets"),
        (b'451-["subscribe",{}]', "binary event"),
    ],
)
def test_long_polling_garbage_is_a_400_and_closes_the_connection(server, caplog, body, words):
    session = polling_session(server.url)
    refused = requests.post(session, data=body, timeout=10)
    if words == "binary event":  # a Socket.IO packet: Engine.IO takes it, the guard refuses it
        assert refused.status_code == 200
        refused = requests.post(session, data="3", timeout=10)
    assert refused.status_code == 400 and refused.json()["error"] == "bad_packet"
    wait_for_log(caplog, "disconnected (server disconnect)")
    [warning] = lines(caplog, logging.WARNING)
    assert words in warning
    assert_no_traceback(caplog)


def test_an_unknown_event_gets_an_error_ack(server, connect, caplog):
    raw = connect(server.url)
    raw.ws.send('427["no_such_event",{}]')
    ack = raw.ws.recv()
    assert ack.startswith("437")
    assert json.loads(ack[3:])[0] == {
        "ok": False,
        "error": "unknown_event",
        "message": "There is no event 'no_such_event'. "
        "Client events: subscribe, unsubscribe, stop.",
    }
    raw.ws.send('428["stop",{"task_id":"a"},"extra"]')
    assert json.loads(raw.ws.recv()[3:])[0]["error"] == "bad_event"
    assert lines(caplog, logging.WARNING) == []
    assert_no_traceback(caplog)


# -- DNS rebinding ------------------------------------------------------------------------------


def test_a_rebound_host_name_is_refused_for_http_and_socketio(server, tmp_path):
    wav = write_wav(tmp_path / "a.wav", music(1.0), 44100)
    headers = {
        "Host": f"{EVIL_HOST}:{port(server)}",
        "Origin": f"http://{EVIL_HOST}:{port(server)}",
    }
    with open(wav, "rb") as file:
        upload = requests.post(
            f"{server.url}/upload", files={"file": file}, headers=headers, timeout=30
        )
    assert upload.status_code == 400
    assert upload.json()["error"] == "bad_host" and EVIL_HOST in upload.json()["message"]
    assert "ALLOWED_HOSTS" in upload.json()["message"]
    handshake = requests.get(
        f"{server.url}/socket.io/?EIO=4&transport=polling", headers=headers, timeout=10
    )
    assert handshake.status_code == 400 and handshake.json()["error"] == "bad_host"
    assert handshake.headers["X-Content-Type-Options"] == "nosniff"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            f"ws://127.0.0.1:{port(server)}/socket.io/?EIO=4&transport=websocket",
            header=[f"Origin: http://{EVIL_HOST}"],
            host=EVIL_HOST,
            timeout=10,
        )
    assert refused.value.status_code == 400
    health = requests.get(f"{server.url}/healthz", timeout=10).json()
    assert (health["active_tasks"], health["queued_tasks"]) == (0, 0)
    for host in (f"localhost:{port(server)}", f"127.0.0.1:{port(server)}", f"[::1]:{port(server)}"):
        assert requests.get(f"{server.url}/healthz", headers={"Host": host}, timeout=10).ok


def test_a_configured_host_name_is_served(make_server):
    server = make_server(ALLOWED_HOSTS="audio.example.com, .lan")
    for host in ("audio.example.com", "studio.lan:8080", "AUDIO.EXAMPLE.COM."):
        assert requests.get(f"{server.url}/healthz", headers={"Host": host}, timeout=10).ok
    refused = requests.get(f"{server.url}/", headers={"Host": "example.com"}, timeout=10)
    assert refused.status_code == 400


# -- what Werkzeug's parser refuses: JSON too -----------------------------------------------


def raw_http(server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port(server)), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n", 431,
         "headers_too_large"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431,
         "headers_too_large"),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400, "bad_request"),  # TLS to a plain port
    ],
    ids=["long address", "long header", "many headers", "not HTTP"],
)  # fmt: skip
def test_requests_werkzeug_refuses_get_json(server, caplog, request_bytes, status, code):
    answer_status, headers, body = raw_http(server, request_bytes)
    assert (answer_status, headers["Content-Type"]) == (status, "application/json")
    assert json.loads(body)["error"] == code and json.loads(body)["message"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    [warning] = lines(caplog, logging.WARNING)
    assert len(warning) < 300
    assert_no_traceback(caplog)


# -- never a 500 for what a client sends ----------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('[{"step": "gain", "db": ' + "[" * 900 + "]" * 900 + "}]", "not an array or object"),
        ('[{"step": "gain", "db": ' + "1" * 5000 + "}]", "finite number"),
        ('[{"step": "highpass", "freq": 80, "order": ' + "9" * 4000 + "}]", "finite number"),
        ("gain=db=" + "1" * 5000, "finite number"),
        ("gain=" + "x" * 100_000 + "=1", "unknown parameter"),
    ],
    ids=["100,000 deep", "900 deep", "5,000 digits", "4,000 digits", "5,000 digit text", "long"],
)
def test_a_hostile_pipeline_is_a_400(server, tmp_path, caplog, pipeline, words):
    wav = write_wav(tmp_path / "a.wav", music(0.5), 44100)
    with open(wav, "rb") as file:
        response = requests.post(
            f"{server.url}/upload", files={"file": file}, data={"pipeline": pipeline}, timeout=30
        )
    assert response.status_code == 400, response.text[:300]
    body = response.json()
    assert body["error"] == "invalid_pipeline" and words in body["message"]
    assert len(response.content) < 1000  # the value is not echoed whole
    assert_no_traceback(caplog)


@pytest.mark.parametrize(
    "body",
    ["[" * 100_000 + "]" * 100_000, '{"task_id": ' + "1" * 5000 + "}"],
    ids=["100,000 deep", "5,000 digits"],
)
def test_a_hostile_stop_body_is_a_400(server, caplog, body):
    response = requests.post(
        f"{server.url}/stop-processing",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert (response.status_code, response.json()["error"]) == (400, "bad_json")
    assert_no_traceback(caplog)
