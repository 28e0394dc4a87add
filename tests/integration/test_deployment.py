"""The deployment the README describes: gunicorn, one process, threads, WebSocket."""

from __future__ import annotations

import signal

import pytest
import requests
from helpers import Gunicorn, wav_pcm


@pytest.fixture
def gunicorn(tmp_path):
    servers = []

    def start() -> Gunicorn:
        servers.append(Gunicorn(tmp_path / "data"))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_gunicorn_serves_the_api_and_the_websocket_stream(gunicorn, listen, audio_file):
    server = gunicorn()
    listener = listen(server.url)
    assert listener.client.transport() == "websocket"
    with open(audio_file(3.0, "mp3"), "rb") as file:
        task = requests.post(
            f"{server.url}/upload", files={"file": file},
            data={"sid": listener.sid, "pipeline": "highpass=freq=80,loudness=target=-16"},
            timeout=30,
        ).json()  # fmt: skip
    event, end = listener.wait_end(task["task_id"])
    assert event == "processing_complete"
    audio = b"".join(chunk["audio"] for chunk in listener.chunks(task["task_id"]))
    result = requests.get(f"{server.url}{end['result_url']}", timeout=30)
    assert audio == wav_pcm(result.content)
    assert (
        "default-src 'self'"
        in requests.get(server.url, timeout=10).headers["Content-Security-Policy"]
    )


def test_gunicorn_stopping_keeps_the_partial_result(gunicorn, listen, audio_file):
    server = gunicorn()
    listener = listen(server.url)
    with open(audio_file(120.0, "flac", rate=48000), "rb") as file:
        task_id = requests.post(
            f"{server.url}/upload", files={"file": file},
            data={"sid": listener.sid, "chunk_seconds": "0.25",
                  "pipeline": "highpass=freq=10:order=8,lowpass=freq=12000:order=8"},
            timeout=30,
        ).json()["task_id"]  # fmt: skip
    listener.wait_chunk(task_id, 2)
    server.process.send_signal(signal.SIGTERM)
    _, stopped = listener.wait_end(task_id, timeout=15)
    assert stopped["reason"] == "shutdown"
    assert server.process.wait(15) == 0
    again = gunicorn()  # the same data directory
    status = requests.get(f"{again.url}/tasks/{task_id}", timeout=10).json()
    assert status["status"] == "stopped" and status["chunks_done"] >= 3
    result = requests.get(f"{again.url}/tasks/{task_id}/result", timeout=30)
    assert len(wav_pcm(result.content)) == status["chunks_done"] * 0.25 * 48000 * 2 * 2
