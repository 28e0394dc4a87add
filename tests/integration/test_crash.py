"""Nothing lost: kill -9 of the server mid-task, DELETE then SIGTERM, a killed encoder."""

from __future__ import annotations

import io
import os
import signal
import threading
import wave
from pathlib import Path

import requests
from helpers import InOrderClient, ServerProcess, wav_pcm

HEAVY = "highpass=freq=10:order=8,lowpass=freq=12000:order=8"


def upload(server: ServerProcess, path: Path, sid: str, **fields: str) -> str:
    with open(path, "rb") as file:
        response = requests.post(
            f"{server.url}/upload",
            files={"file": file},
            data={"sid": sid, "chunk_seconds": "0.25", "pipeline": HEAVY, **fields},
            timeout=30,
        )
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def test_a_task_killed_with_the_server_is_failed_with_its_partial_result(
    tmp_path, listen, audio_file
):
    data = tmp_path / "data"
    server = ServerProcess(data, workers=2)
    try:
        listener = listen(server.url)
        task_id = upload(server, audio_file(120.0, "flac", rate=48000), listener.sid, format="mp3")
        listener.wait_chunk(task_id, 4)
        server.process.kill()  # kill -9: no handler runs
        server.process.wait(10)
        received = b"".join(chunk["audio"] for chunk in listener.chunks(task_id))
    finally:
        server.close()
    folder = data / task_id
    assert (folder / "task.json").exists()

    again = ServerProcess(data, workers=2)
    try:
        task = requests.get(f"{again.url}/tasks/{task_id}", timeout=10).json()
        assert task["status"] == "failed" and task["error"]["error"] == "server_restarted"
        assert "partial result" in task["error"]["message"]
        emitted = task["chunks_done"]
        assert emitted >= 5
        result = requests.get(f"{again.url}/tasks/{task_id}/result", timeout=30)
        assert result.status_code == 200 and result.headers["Content-Type"] == "audio/wav"
        assert 'filename="' in result.headers["Content-Disposition"]
        assert result.headers["Content-Disposition"].endswith('.wav"')
        pcm = wav_pcm(result.content)
        assert len(pcm) == emitted * 0.25 * 48000 * 2 * 2
        assert pcm.startswith(received)  # what the client got is the start of what was kept
        assert not list(folder.glob("result.mp3*")) and not (folder / "upload").exists()

        # A subscriber replaying it gets every kept chunk, then one processing_error.
        replay = listen(again.url)
        ack = replay.client.call("subscribe", {"task_id": task_id, "from_index": 0}, timeout=10)
        assert ack["ok"] is True
        event, end = replay.wait_end(task_id)
        assert (event, end["error"], end["status"]) == (
            "processing_error",
            "server_restarted",
            "failed",
        )
        assert end["chunks_emitted"] == emitted and end["result_url"].endswith("/result")
        indexes = [chunk["index"] for chunk in replay.chunks(task_id)]
        assert indexes == list(range(emitted))
        assert b"".join(chunk["audio"] for chunk in replay.chunks(task_id)) == pcm
    finally:
        again.close()


def test_a_task_killed_while_queued_is_failed_not_lost(tmp_path, listen, audio_file):
    data = tmp_path / "data"
    server = ServerProcess(data, workers=1, max_active_tasks=1)
    try:
        listener = listen(server.url)
        path = audio_file(120.0, "flac", rate=48000)
        running = upload(server, path, listener.sid)
        waiting = upload(server, path, listener.sid)
        assert requests.get(f"{server.url}/tasks/{waiting}", timeout=10).json()["status"] == (
            "queued"
        )
        listener.wait_chunk(running, 1)
        server.process.kill()
        server.process.wait(10)
    finally:
        server.close()
    again = ServerProcess(data, workers=1)
    try:
        task = requests.get(f"{again.url}/tasks/{waiting}", timeout=10).json()
        assert task["status"] == "failed" and task["error"]["error"] == "server_restarted"
        assert task["chunks_done"] == 0
        result = requests.get(f"{again.url}/tasks/{waiting}/result", timeout=10)
        assert result.status_code == 409 and result.json()["error"] == "task_failed"
    finally:
        again.close()


def test_delete_then_sigterm_leaves_no_folder(tmp_path, listen, audio_file):
    data = tmp_path / "data"
    server = ServerProcess(data, workers=2)
    try:
        listener = listen(server.url)
        # Long chunks: when the DELETE comes, the pool is busy with them for a while.
        task_id = upload(
            server, audio_file(120.0, "flac", rate=48000), listener.sid, chunk_seconds="20",
            pipeline=f"{HEAVY},compressor,{HEAVY}",
        )  # fmt: skip
        listener.wait_chunk(task_id, 0)
        assert requests.delete(f"{server.url}/tasks/{task_id}", timeout=10).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
    finally:
        server.close()
    assert not (data / task_id).exists()


def test_a_killed_encoder_leaves_the_wav_result_and_says_which_format_failed(tmp_path, audio_file):
    server = ServerProcess(tmp_path / "data", workers=2)
    client = InOrderClient(reconnection=False)
    ends: list[tuple[str, dict]] = []
    first_chunk = threading.Event()
    client.on("audio_chunk", lambda data: first_chunk.set())
    for name in ("processing_complete", "processing_error", "processing_stopped"):
        client.on(name, lambda data, name=name: ends.append((name, data)))
    try:
        client.connect(server.url, transports=["websocket"], wait_timeout=10)
        task_id = upload(
            server, audio_file(60.0, "flac", rate=48000), client.get_sid(), format="mp3"
        )
        assert first_chunk.wait(30)
        encoders = _children_named(server.process.pid, "ffmpeg", "libmp3lame")
        assert encoders, "no MP3 encoder is running"
        for pid in encoders:
            os.kill(pid, signal.SIGKILL)
        task = _wait_finished(server, task_id)
        assert task["status"] == "completed"
        (warning,) = [w for w in task["warnings"] if w["warning"] == "encode_failed"]
        assert warning["format"] == "mp3" and "WAV instead" in warning["message"]
        result = requests.get(f"{server.url}/tasks/{task_id}/result", timeout=30)
        assert result.status_code == 200 and result.headers["Content-Type"] == "audio/wav"
        with wave.open(io.BytesIO(result.content)) as wav:
            assert wav.getnframes() == 60 * 48000
    finally:
        client.disconnect()
        server.close()


def _children_named(parent: int, name: str, argument: str) -> list[int]:
    """Process ids of the parent's children running name with argument on their command line."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
            command = (status.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields.get("PPid", "0")) != parent or not command:
            continue
        if Path(command[0].decode()).name.startswith(name) and any(
            argument.encode() in part for part in command
        ):
            found.append(int(status.parent.name))
    return found


def _wait_finished(server: ServerProcess, task_id: str) -> dict:
    """Wait for a task to end by following it over Socket.IO (no polling loop with sleep)."""
    listener = InOrderClient(reconnection=False)
    done = threading.Event()
    for name in ("processing_complete", "processing_error", "processing_stopped"):
        listener.on(name, lambda data: done.set())
    listener.connect(server.url, transports=["websocket"], wait_timeout=10)
    try:
        listener.call("subscribe", {"task_id": task_id, "from_index": 0}, timeout=10)
        assert done.wait(60)
    finally:
        listener.disconnect()
    return requests.get(f"{server.url}/tasks/{task_id}", timeout=10).json()
