"""SIGTERM to python app.py: tasks stop (reason shutdown), results are kept, nothing else is."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import requests
from helpers import ServerProcess, wav_pcm


def test_sigterm_stops_tasks_keeps_their_results_and_exits_within_5_s(tmp_path, listen,
                                                                        audio_file):  # fmt: skip
    data = tmp_path / "data"
    server = ServerProcess(data, workers=2, log=tmp_path / "server.log")
    try:
        listener = listen(server.url)
        with open(audio_file(120.0, "flac", rate=48000), "rb") as file:
            task_id = requests.post(
                f"{server.url}/upload", files={"file": file},
                data={"sid": listener.sid, "chunk_seconds": "0.25", "format": "ogg",
                      "pipeline": "highpass=freq=10:order=8,lowpass=freq=12000:order=8"},
                timeout=30,
            ).json()["task_id"]  # fmt: skip
        listener.wait_chunk(task_id, 2)
        asked = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        event, stopped = listener.wait_end(task_id, timeout=10)
        assert (event, stopped["reason"]) == ("processing_stopped", "shutdown")
        assert server.process.wait(10) == 0
        assert time.monotonic() - asked < 5
    finally:
        server.close()
    folder = data / task_id
    assert {path.name for path in folder.iterdir()} == {
        "task.json",
        "result.wav",
        "result.ogg",
        "chunks.jsonl",
    }  # fmt: skip  (no upload, spool or half-written .part left)
    assert list((data / "uploads").iterdir()) == []

    again = ServerProcess(data, workers=2)  # a restart serves the partial result
    try:
        task = requests.get(f"{again.url}/tasks/{task_id}", timeout=10).json()
        assert task["status"] == "stopped" and task["chunks_done"] == stopped["chunks_emitted"]
        result = requests.get(f"{again.url}/tasks/{task_id}/result", timeout=30)
        assert result.headers["Content-Type"] == "audio/ogg"
        assert len(result.content) > 0
        assert task["summary"]["duration"] == task["chunks_done"] * 0.25
    finally:
        again.close()
    assert Path(folder / "result.wav").stat().st_size == 44 + len(
        wav_pcm(Path(folder / "result.wav").read_bytes())
    )
