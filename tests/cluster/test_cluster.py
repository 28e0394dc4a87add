"""Cluster mode against a real redis-server: two web instances and two workers, each a process.

Every process shares one Redis and one data folder, as on several machines;
the clients are real python-socketio clients over WebSocket.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import ROOT, ServerProcess, read_wav, wav_pcm

from audioserver.cluster import WORKERS

SLOW_PIPELINE = "highpass=freq=80,compressor,loudness=target=-16"


class WebInstance(ServerProcess):
    """python app.py with --redis-url: a web instance of the cluster."""


class WorkerProcess:
    """python app.py worker: takes the cluster's tasks from the queue."""

    def __init__(self, *, redis_url: str, data_dir: Path, log: Path, workers: int = 1) -> None:
        self.log = log
        arguments = ["worker", "--redis-url", redis_url, "--data-dir", str(data_dir),
                     "--workers", str(workers), "--max-active-tasks", "2",
                     "--log-level", "INFO"]  # fmt: skip
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "app.py"), *arguments],
                stdout=output, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Cluster:
    def __init__(self, redis_server: Any, folder: Path) -> None:
        self.redis = redis_server
        self.data_dir = folder / "shared"
        self.data_dir.mkdir()
        self.webs: list[WebInstance] = []
        self.workers: list[WorkerProcess] = []
        for name in ("a", "b"):
            self.webs.append(
                WebInstance(self.data_dir, log=folder / f"web-{name}.log",
                            redis_url=redis_server.url, log_level="INFO")  # fmt: skip
            )
        for name in ("1", "2"):
            self.workers.append(
                WorkerProcess(redis_url=redis_server.url, data_dir=self.data_dir,
                              log=folder / f"worker-{name}.log")  # fmt: skip
            )

    def close(self) -> None:
        for process in [*self.webs, *self.workers]:
            process.close()


@pytest.fixture
def cluster(redis_server, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(redis_server, tmp_path)
    yield running
    running.close()


def upload(url: str, path: Path, **form: str) -> dict[str, Any]:
    with path.open("rb") as file:
        response = requests.post(f"{url}/upload", files={"file": file}, data=form, timeout=30)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def subscribe(listener: Any, task_id: str, from_index: int = 0) -> dict[str, Any]:
    ack: dict[str, Any] = listener.client.call(
        "subscribe", {"task_id": task_id, "from_index": from_index}, timeout=10
    )
    assert ack["ok"], ack
    return ack


def concatenated(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(chunk["audio"] for chunk in chunks)


def test_upload_on_a_subscribe_on_b_gets_every_chunk_once_in_order(cluster, listen, audio_file):
    a, b = cluster.webs
    task = upload(a.url, audio_file(8.0), pipeline="highpass=freq=80,normalize", chunk_seconds="0.5")
    listener = listen(b.url)
    subscribe(listener, task["task_id"])
    event, data = listener.wait_end(task["task_id"])
    assert event == "processing_complete", data
    indexes = [chunk["index"] for chunk in listener.chunks(task["task_id"])]
    assert indexes == list(range(data["chunks"]))
    assert listener.of_task(task["task_id"])[-1][0] == "processing_complete"
    # The stream is the result, byte for byte, whichever instance serves it.
    result = requests.get(f"{a.url}/tasks/{task['task_id']}/result", timeout=30)
    assert result.status_code == 200
    assert concatenated(listener.chunks(task["task_id"])) == wav_pcm(result.content)
    described = requests.get(f"{b.url}/tasks/{task['task_id']}", timeout=10).json()
    assert described["status"] == "completed"
    assert described["chunks_done"] == data["chunks"]
