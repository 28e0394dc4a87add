"""A stranger's bad input sent to a live server: the right 4xx, nothing left, still serving."""

from __future__ import annotations

import socket
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import ffmpeg_make, music, write_wav
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture
def server(make_server, tmp_path, monkeypatch):
    """A live server with a 2 MB upload limit and a temp folder of its own, watched."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    server = make_server(MAX_UPLOAD_MB=2.0)
    server.temp = temp
    return server


def files_left(server) -> list[str]:
    data = Path(server.app.config["DATA_DIR"])
    return [str(p) for p in [*data.rglob("*"), *server.temp.rglob("*")] if p.is_file()]


def assert_unharmed(server) -> None:
    """No task running, nothing on disk, and the server answers."""
    health = requests.get(f"{server.url}/healthz", timeout=10).json()
    assert (health["active_tasks"], health["queued_tasks"]) == (0, 0)
    assert files_left(server) == []


def post_file(server, name: str, content: bytes, **fields) -> requests.Response:
    return requests.post(
        f"{server.url}/upload", files={"file": (name, content)}, data=fields, timeout=30
    )


def wav_header(*, frames: int, rate: int = 44100, channels: int = 2) -> bytes:
    data = frames * channels * 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, channels, rate,
        rate * channels * 2, channels * 2, 16, b"data", data,
    )  # fmt: skip


def not_audio(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """Uploads that are not audio, and a word of the reason the server must give."""
    video = ffmpeg_make("-f lavfi -i testsrc=d=1:s=64x48", tmp_path / "silent.mp4")
    image = ffmpeg_make("-f lavfi -i testsrc=d=0.1:s=64x48 -frames:v 1", tmp_path / "pic.png")
    m4a = ffmpeg_make("-f lavfi -i sine=d=20 -c:a aac", tmp_path / "song.m4a").read_bytes()
    return {
        "empty.mp3": (b"", "could not be decoded"),
        "random.mp3": (np.random.default_rng(2).bytes(50_000), "could not be decoded"),
        "notes.mp3": (b"Shopping list\n- milk\n" * 200, "could not be decoded"),
        "silent.mp4": (video.read_bytes(), "no audio stream"),
        "pic.png": (image.read_bytes(), "could not be decoded"),
        "truncated.m4a": (m4a[: len(m4a) // 10], "could not be decoded"),
        "hours-no-data.wav": (wav_header(frames=44100 * 3600 * 5, channels=1), "no audio samples"),
        "list.m3u8": (b"#EXTM3U\n#EXTINF:1,\n/etc/passwd\n", "could not be decoded"),
    }


def test_uploads_that_are_not_audio_are_415_and_cost_nothing(server, tmp_path):
    for name, (content, reason) in not_audio(tmp_path).items():
        response = post_file(server, name, content)
        assert response.status_code == 415, name
        body = response.json()
        assert body["error"] == "not_audio" and reason in body["message"], (name, body)
        assert "/" not in body["message"].replace("WAV, MP3", ""), body  # no server paths
        assert_unharmed(server)


def test_a_header_that_lies_about_the_length_is_taken_at_the_files_size(server, listen):
    listener = listen(server.url)
    content = wav_header(frames=44100 * 3600 * 5, channels=1) + b"\1\0" * 44100
    response = post_file(server, "liar.wav", content, sid=listener.sid)
    assert response.status_code == 202 and response.json()["duration"] < 2
    event, end = listener.wait_end(response.json()["task_id"])
    assert event == "processing_complete" and end["duration"] == pytest.approx(1.0)


@pytest.mark.parametrize(("fmt", "warned"), [("mp3", True), ("flac", True), ("ogg", False)])
def test_a_truncated_file_is_processed_as_far_as_it_decodes(
    server, listen, audio_file, fmt, warned
):
    full = audio_file(30.0, fmt)
    content = full.read_bytes()
    listener = listen(server.url)
    response = post_file(server, f"cut.{fmt}", content[: len(content) // 10], sid=listener.sid)
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    event, end = listener.wait_end(task_id)
    assert event == "processing_complete"
    assert 1.0 < end["duration"] < 6.0
    assert bool(end["warnings"]) == warned
    if warned:
        assert end["warnings"][0]["warning"] == "truncated"
        assert "probably truncated" in end["warnings"][0]["message"]


def test_a_body_over_the_limit_is_413_before_it_is_read(server):
    limit = 2 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), 10) as raw:
        raw.sendall(
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\n"
            + f"Content-Length: {limit + 1}\r\n\r\n".encode()
            + b"--xyz\r\n"  # and nothing more of the 2 MB announced
        )
        started = time.monotonic()
        answer = b""
        while chunk := raw.recv(65536):  # the server answers, then closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"too_large"' in answer and b"2 MB" in answer
    assert time.monotonic() - started < 5
    assert_unharmed(server)


def multipart(filename: bytes, content: bytes) -> tuple[bytes, str]:
    """A multipart body with a file part named exactly filename (bytes no client would send)."""
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        + b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
        + f"--{boundary}--\r\n".encode()
    )  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_filename_that_is_not_utf8_is_a_clear_400(server, tmp_path):
    wav = write_wav(tmp_path / "a.wav", music(0.5), 44100).read_bytes()
    body, content_type = multipart(b"caf\xe9 \xff\xfe.wav", wav)
    response = requests.post(
        f"{server.url}/upload", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert (response.status_code, response.json()["error"]) == (400, "bad_multipart")
    assert "UTF-8" in response.json()["message"]
    assert_unharmed(server)


@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        (b"../../../etc/evil.wav", "evil.wav"),
        (b"..\\..\\windows\\evil.wav", None),  # a quoted-string escape: shown without them
        (b"a\x00b.wav", "ab.wav"),
        (b"x" * 5000 + b".wav", "x" * 255),
        (b"<script>alert(1)</script>.wav", "script>.wav"),  # "/" ends a folder name
    ],
)
def test_a_filename_is_only_ever_shown(server, tmp_path, filename, shown):
    wav = write_wav(tmp_path / "a.wav", music(0.5), 44100).read_bytes()
    body, content_type = multipart(filename, wav)
    response = requests.post(
        f"{server.url}/upload", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert response.status_code == 202, response.text
    task = response.json()
    if shown is not None:
        assert task["filename"] == shown
    assert task["filename"].isprintable() and len(task["filename"]) <= 255
    assert server.engine.get(task["task_id"]).retired.wait(30)
    result = requests.get(f"{server.url}/tasks/{task['task_id']}/result", timeout=30)
    disposition = result.headers["Content-Disposition"]
    assert disposition.isascii() and "/" not in disposition.split(";")[1]
    assert "\r" not in disposition and "\n" not in disposition
    data = Path(server.app.config["DATA_DIR"])
    assert {p.name for p in data.iterdir()} == {"uploads", task["task_id"]}
    requests.delete(f"{server.url}/tasks/{task['task_id']}", timeout=30)


event_names = st.sampled_from(["subscribe", "unsubscribe", "stop"])
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=9), inner, max_size=3)
    ),
    max_leaves=8,
)
payloads = json_values | st.fixed_dictionaries(
    {"task_id": json_values}, optional={"from_index": json_values}
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(event=event_names, payload=payloads)
def test_socket_events_with_any_payload_get_an_ack_and_harm_nothing(live_server, listen, event,
                                                                     payload, caplog):  # fmt: skip
    if not hasattr(live_server, "fuzz_listener"):
        live_server.fuzz_listener = listen(live_server.url)
    ack = live_server.fuzz_listener.client.call(event, payload, timeout=10)
    assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool)
    if not ack["ok"]:
        assert ack["error"] and ack["message"]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
