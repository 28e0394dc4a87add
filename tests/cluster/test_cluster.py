"""Cluster mode against a real redis-server: two web instances and two workers, each a process.

Every process shares one Redis and one data folder, as on several machines;
the clients are real python-socketio clients over WebSocket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import ROOT, ServerProcess, free_port, launch_nginx, read_wav, wav_pcm

from audioserver.cluster import LEASE_SECONDS
from bench.harness import WorkerProcess

SLOW_PIPELINE = "highpass=freq=80,compressor,loudness=target=-16"
STOP_SECONDS = 0.2  # processing_stopped at every subscriber within this of the request


class WebInstance(ServerProcess):
    """python app.py with --redis-url: a web instance of the cluster."""


class Cluster:
    def __init__(self, redis_server: Any, folder: Path) -> None:
        self.redis = redis_server
        self.data_dir = folder / "shared"
        self.data_dir.mkdir()
        self.webs: list[WebInstance] = []
        self.workers: list[WorkerProcess] = []
        for name in ("a", "b"):
            self.webs.append(
                WebInstance(
                    self.data_dir,
                    log=folder / f"web-{name}.log",
                    redis_url=redis_server.url,
                    log_level="INFO",
                )
            )
        for name in ("1", "2"):
            self.workers.append(
                WorkerProcess(
                    redis_url=redis_server.url,
                    data_dir=self.data_dir,
                    log=folder / f"worker-{name}.log",
                )
            )
        for worker in self.workers:
            worker.wait_until_alive(redis_server.client)

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
    task = upload(
        a.url, audio_file(8.0), pipeline="highpass=freq=80,normalize", chunk_seconds="0.5"
    )
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


def test_stop_on_b_reaches_the_worker_and_every_subscriber(cluster, listen, audio_file):
    a, b = cluster.webs
    task = upload(a.url, audio_file(120.0), pipeline=SLOW_PIPELINE, chunk_seconds="0.25")
    task_id = task["task_id"]
    on_a, on_b = listen(a.url), listen(b.url)
    on_b.client.on("processing_progress", on_b._recorder("processing_progress"))
    subscribe(on_a, task_id)
    subscribe(on_b, task_id)
    on_a.wait_chunk(task_id, 0)
    assert requests.get(f"{b.url}/healthz", timeout=10).json()["active_tasks"] == 1
    stopper = listen(b.url)
    asked = time.monotonic()
    ack = stopper.client.call("stop", {"task_id": task_id}, timeout=10)
    assert ack["status"] == "stopped", ack
    for listener in (on_a, on_b):
        _, data, at = listener.wait_for(
            lambda name, data: name == "processing_stopped" and data["task_id"] == task_id
        )
        assert data["reason"] == "requested"
        assert at - asked < STOP_SECONDS, f"processing_stopped after {at - asked:.3f} s"
        indexes = [chunk["index"] for chunk in listener.chunks(task_id)]
        assert indexes == list(range(data["chunks_emitted"]))
        assert listener.of_task(task_id)[-1][0] == "processing_stopped"
    assert data["chunks_emitted"] < task["chunks_total"]
    # The worker's processing_progress reaches instance B's client too, before the end.
    progress = [data for name, data in on_b.of_task(task_id) if name == "processing_progress"]
    assert progress, "processing_progress relayed from the worker"
    assert all(item["stages"] == 2 for item in progress)
    described = requests.get(f"{a.url}/tasks/{task_id}", timeout=10).json()
    assert described["status"] == "stopped"
    # The partial result: what was emitted, from the other instance.
    result = requests.get(f"{b.url}/tasks/{task_id}/result", timeout=70)
    assert result.status_code == 200, result.text
    assert wav_pcm(result.content) == concatenated(on_a.chunks(task_id))


def test_replay_from_index_on_b_of_a_task_uploaded_on_a(cluster, listen, audio_file):
    a, b = cluster.webs
    task = upload(a.url, audio_file(6.0), pipeline="normalize", chunk_seconds="0.5", format="flac")
    task_id = task["task_id"]
    whole = listen(a.url)
    subscribe(whole, task_id)
    event, data = whole.wait_end(task_id)
    assert event == "processing_complete"
    late = listen(b.url)
    subscribe(late, task_id, from_index=5)
    assert late.wait_end(task_id)[0] == "processing_complete"
    assert [chunk["index"] for chunk in late.chunks(task_id)] == list(range(5, data["chunks"]))
    assert concatenated(late.chunks(task_id)) == concatenated(whole.chunks(task_id)[5:])
    # The result (encoded by the worker), the waveform and DELETE, from the other instance.
    result = requests.get(f"{b.url}/tasks/{task_id}/result", timeout=70)
    assert result.status_code == 200, result.text
    assert result.content[:4] == b"fLaC"
    waveform = requests.get(f"{b.url}/tasks/{task_id}/waveform.json", timeout=10)
    assert waveform.status_code == 200 and waveform.json()["version"] == 2
    assert requests.delete(f"{b.url}/tasks/{task_id}", timeout=10).status_code == 200
    assert requests.get(f"{a.url}/tasks/{task_id}", timeout=10).status_code == 404
    assert not (cluster.data_dir / task_id).exists()


def test_ten_tasks_over_two_workers_each_whole_and_isolated(cluster, listen, audio_file):
    a, b = cluster.webs
    files = [audio_file(3.0 + number * 0.5) for number in range(10)]
    tasks = [
        upload((a, b)[number % 2].url, path, pipeline="gain=db=-3", chunk_seconds="0.5")
        for number, path in enumerate(files)
    ]
    listeners = [listen((b, a)[number % 2].url) for number in range(10)]
    for listener, task in zip(listeners, tasks, strict=True):
        subscribe(listener, task["task_id"])
    workers: set[int] = set()
    for listener, task, path in zip(listeners, tasks, files, strict=True):
        task_id = task["task_id"]
        event, data = listener.wait_end(task_id)
        assert event == "processing_complete", data
        assert {data["task_id"] for _, data in listener.of_task(task_id)} == {task_id}
        assert len(listener.events) == len(listener.of_task(task_id))  # nothing of the others
        chunks = listener.chunks(task_id)
        assert [chunk["index"] for chunk in chunks] == list(range(data["chunks"]))
        expected, _ = read_wav(path)
        assert len(concatenated(chunks)) == expected.size * 2
        result = requests.get(f"{a.url}/tasks/{task_id}/result", timeout=30)
        assert concatenated(chunks) == wav_pcm(result.content)
        workers |= {number for number, worker in enumerate(cluster.workers) if worker.ran(task_id)}
    assert workers == {0, 1}, "both workers took tasks"


def test_health_says_redis_and_live_workers(cluster):
    a, _ = cluster.webs
    health = requests.get(f"{a.url}/healthz", timeout=10).json()
    assert health["redis"] == "ok"
    assert health["queued_tasks"] == 0
    assert health["cluster_workers"] == 2


def test_queue_bound_503_metrics_depth_and_a_queued_task_stopped_by_the_web(
    redis_server, tmp_path, listen, audio_file
):
    # A web instance with no worker yet: what it queues waits in Redis.
    web = WebInstance(tmp_path / "shared", log=tmp_path / "web.log",
                      redis_url=redis_server.url, max_queued_tasks=2)  # fmt: skip
    try:
        first = upload(web.url, audio_file(2.0))
        upload(web.url, audio_file(2.0))
        with audio_file(2.0).open("rb") as file:
            refused = requests.post(f"{web.url}/upload", files={"file": file}, timeout=30)
        assert refused.status_code == 503
        assert refused.json()["error"] == "at_capacity"
        assert int(refused.headers["Retry-After"]) > 0
        assert requests.get(f"{web.url}/healthz", timeout=10).json()["queued_tasks"] == 2
        metrics = requests.get(f"{web.url}/metrics", timeout=10).text
        assert "audioserver_queued_tasks 2.0" in metrics
        # Stopped before any worker took it: the web instance ends it, and no worker runs it.
        listener = listen(web.url)
        subscribe(listener, first["task_id"])
        stop = requests.post(
            f"{web.url}/stop-processing", json={"task_id": first["task_id"]}, timeout=10
        )
        assert stop.status_code == 200, stop.text
        event, data = listener.wait_end(first["task_id"])
        assert (event, data["reason"], data["chunks_emitted"]) == (
            "processing_stopped",
            "requested",
            0,
        )
        worker = WorkerProcess(redis_url=redis_server.url, data_dir=tmp_path / "shared",
                               log=tmp_path / "worker.log")  # fmt: skip
        try:
            worker.wait_until_alive(redis_server.client)
            described = requests.get(f"{web.url}/tasks/{first['task_id']}", timeout=10).json()
            assert described["status"] == "stopped"
        finally:
            worker.close()
        assert not worker.ran(first["task_id"])
    finally:
        web.close()


def started_on(cluster: Cluster, listener: Any, task_id: str) -> WorkerProcess:
    """The worker running a task, once its first chunk has arrived."""
    listener.wait_chunk(task_id, 0)
    running = [worker for worker in cluster.workers if worker.ran(task_id)]
    assert len(running) == 1, "one worker runs the task"
    return running[0]


def test_a_worker_killed_mid_task_fails_it_with_the_chunks_it_sent_once(
    cluster, listen, audio_file
):
    a, b = cluster.webs
    task = upload(a.url, audio_file(120.0), pipeline=SLOW_PIPELINE, chunk_seconds="0.25")
    task_id = task["task_id"]
    listener = listen(b.url)
    subscribe(listener, task_id)
    worker = started_on(cluster, listener, task_id)
    worker.process.kill()  # kill -9: no goodbye, its claim simply stops being renewed
    event, data = listener.wait_end(task_id, timeout=LEASE_SECONDS + 20)
    assert (event, data["error"]) == ("processing_error", "worker_lost"), data
    chunks = listener.chunks(task_id)
    assert [chunk["index"] for chunk in chunks] == list(range(len(chunks)))
    assert data["chunks_emitted"] == len(chunks)
    described = requests.get(f"{a.url}/tasks/{task_id}", timeout=10).json()
    assert described["status"] == "failed"
    # What was sent is kept, as the partial result, and is exactly the stream.
    result = requests.get(f"{a.url}/tasks/{task_id}/result", timeout=30)
    assert result.status_code == 200, result.text
    assert wav_pcm(result.content) == concatenated(chunks)


def test_sigterm_to_a_worker_stops_its_task_with_reason_shutdown(cluster, listen, audio_file):
    a, _ = cluster.webs
    task = upload(a.url, audio_file(120.0), pipeline=SLOW_PIPELINE, chunk_seconds="0.25")
    task_id = task["task_id"]
    listener = listen(a.url)
    subscribe(listener, task_id)
    worker = started_on(cluster, listener, task_id)
    worker.process.terminate()
    event, data = listener.wait_end(task_id)
    assert (event, data["reason"]) == ("processing_stopped", "shutdown"), data
    assert worker.process.wait(20) == 0
    result = requests.get(f"{a.url}/tasks/{task_id}/result", timeout=70)
    assert result.status_code == 200, result.text
    assert wav_pcm(result.content) == concatenated(listener.chunks(task_id))


# -- nginx in front: deploy/nginx-cluster.conf --------------------------------------------------


class ClusterNginx:
    """nginx in a folder of its own, with deploy/nginx-cluster.conf on these ports."""

    def __init__(self, folder: Path, *, upstreams: list[int]) -> None:
        binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("no nginx (CI=true: this test must run)", pytrace=False)
            pytest.skip("no nginx (as root: apt-get install nginx-light)")
        folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = (ROOT / "deploy" / "nginx-cluster.conf").read_text()
        for old, new in [
            ("listen 80;", f"listen 127.0.0.1:{self.port};"),
            ("server 127.0.0.1:5001 ", f"server 127.0.0.1:{upstreams[0]} "),
            ("server 127.0.0.1:5002 ", f"server 127.0.0.1:{upstreams[1]} "),
        ]:
            assert old in config, f"deploy/nginx-cluster.conf has no {old!r}"
            config = config.replace(old, new)
        self.log = folder / "error.log"
        self.process = launch_nginx(binary, folder, config)
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            try:
                self.process.wait(timeout=0.05)  # waiting on the process: did it end?
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"nginx exited: {self.log.read_text(errors='replace')[-2000:]}")
        raise RuntimeError(f"nginx did not listen on {self.url}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def serving(cluster: Cluster, sid: str) -> WebInstance:
    """The web instance a Socket.IO client is connected to (its connect line names the sid)."""
    found = [web for web in cluster.webs if f"client {sid} connected" in web.log.read_text()]
    assert len(found) == 1, "one instance serves the client"
    return found[0]


def test_through_nginx_a_web_instance_killed_mid_stream_and_resume_on_the_other(
    cluster, listen, audio_file, tmp_path
):
    proxy = ClusterNginx(tmp_path / "nginx", upstreams=[web.port for web in cluster.webs])
    try:
        task = upload(proxy.url, audio_file(60.0), pipeline=SLOW_PIPELINE, chunk_seconds="0.25")
        task_id = task["task_id"]
        first = listen(proxy.url)
        dropped = threading.Event()
        first.client.on("disconnect", lambda *args: dropped.set())
        subscribe(first, task_id)
        first.wait_chunk(task_id, 2)
        victim = serving(cluster, first.sid)
        victim.process.kill()  # kill -9 mid-stream
        assert dropped.wait(30), "the client saw its connection end"
        received = first.chunks(task_id)
        assert [chunk["index"] for chunk in received] == list(range(len(received)))
        # The client connects again through nginx, which sends it to the other instance.
        second = listen(proxy.url)
        assert serving(cluster, second.sid) is not victim
        subscribe(second, task_id, from_index=len(received))
        event, data = second.wait_end(task_id)
        assert event == "processing_complete", data
        rest = second.chunks(task_id)
        assert len(received) < data["chunks"], "the instance died mid-stream"
        indexes = [chunk["index"] for chunk in received + rest]
        assert indexes == list(range(data["chunks"]))
        result = requests.get(f"{proxy.url}/tasks/{task_id}/result", timeout=30)
        assert result.status_code == 200, result.text
        assert concatenated(received + rest) == wav_pcm(result.content)
    finally:
        proxy.close()
