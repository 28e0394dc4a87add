"""Answers are closed even when the client resets the connection in the middle of one."""

from __future__ import annotations

import gc
import socket
import struct
import threading
import time
from typing import Any

import requests

from audioserver.closing import CloseWhenDropped
from audioserver.page import PEAKS


class Answer:
    """An answer's iterable that notes how often it was closed."""

    def __init__(self) -> None:
        self.closed = 0

    def __iter__(self):
        yield b"a"
        yield b"b"

    def close(self) -> None:
        self.closed += 1


def test_an_answer_the_server_drops_unclosed_is_closed_then():
    answer = Answer()
    wrapped = CloseWhenDropped(lambda environ, start_response: answer)({}, None)
    assert next(iter(wrapped)) == b"a"  # the client went away after the first piece
    del wrapped
    assert answer.closed == 1


def test_an_answer_is_closed_once():
    answer = Answer()
    wrapped = CloseWhenDropped(lambda environ, start_response: answer)({}, None)
    assert b"".join(wrapped) == b"ab"
    wrapped.close()
    del wrapped
    assert answer.closed == 1


def test_servers_with_a_file_wrapper_get_the_answer_itself():
    answer = Answer()
    environ: dict[str, Any] = {"wsgi.file_wrapper": object()}
    assert CloseWhenDropped(lambda environ, start_response: answer)(environ, None) is answer


def request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def test_browsers_cancelling_file_requests_leave_no_file_open(live_server):
    """A media element reads the start of a file and resets the connection, a hundred times.

    Werkzeug's server would skip closing the file (see audioserver/closing.py);
    the garbage collector would then find it open, which fails this test
    (pytest turns the ResourceWarning into an error).
    """
    port = int(live_server.url.rsplit(":", 1)[1])
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", port)) as client:
            request = f"GET /static/{PEAKS} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-\r\n\r\n"
            client.sendall(request.encode())
            assert client.recv(100).startswith(b"HTTP/1.1 206")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 30
    while request_threads() and time.monotonic() < deadline:
        time.sleep(0.01)  # the server's request threads give no signal when they end
    assert not request_threads()
    gc.collect()
    assert requests.get(f"{live_server.url}/healthz", timeout=10).json()["status"] == "ok"
