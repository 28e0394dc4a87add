"""Load and fairness: many clients at once get their own chunks in order; health stays quick."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from helpers import TASK_EVENTS, ServerProcess, music

UPLOADS = 20
IDLE_CLIENTS = 30


WATCHER = """
import contextlib, os, sys, time, urllib.request
url, report = sys.argv[1], sys.argv[2]
# A monitor stands outside the server's machine; here it shares two cores with 50 clients
# and the server, so let it be scheduled first: what is timed is then the server's answer.
with contextlib.suppress(OSError):
    os.setpriority(os.PRIO_PROCESS, 0, -10)
slowest, answers = 0.0, 0
while True:
    started = time.perf_counter()
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        assert response.status == 200
        response.read()
    slowest, answers = max(slowest, time.perf_counter() - started), answers + 1
    with open(report + ".part", "w") as out:  # then renamed: a stop never finds it half written
        out.write(f"{slowest} {answers}")
    os.replace(report + ".part", report)
    time.sleep(0.05)
"""


class HealthWatch:
    """Asks /healthz every 50 ms from a process of its own (the test's threads don't delay it)."""

    def __init__(self, url: str, report: Path) -> None:
        self.report = report
        self.process = subprocess.Popen([sys.executable, "-c", WATCHER, url, str(report)])

    def stop(self) -> tuple[float, int]:
        """Stop watching; return the slowest answer (s) and how many were asked."""
        self.process.terminate()
        self.process.wait()
        slowest, answers = self.report.read_text().split()
        return float(slowest), int(answers)


@pytest.fixture
def server_process(tmp_path):
    server = ServerProcess(tmp_path / "data", max_queued_tasks=UPLOADS, workers=2)
    # In use, the 50 clients run on other machines; here their threads share two cores
    # with the server, thread for thread. Giving the server its machine's share back
    # (when allowed) makes the test time the server, not the test's own clients.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, server.process.pid, -5)
    yield server
    server.close()


def test_50_connections_and_20_uploads_at_once(server_process, listen, audio_file, tmp_path):
    server = server_process
    path = audio_file(3.0, "mp3", rate=22050, signal=music(3.0, rate=22050))
    uploaders = [listen(server.url) for _ in range(UPLOADS)]
    idle = [listen(server.url) for _ in range(IDLE_CLIENTS)]
    watch = HealthWatch(server.url, tmp_path / "health.txt")
    tasks: dict[int, str] = {}
    start = threading.Barrier(UPLOADS)

    def upload(number: int) -> None:
        start.wait()
        with open(path, "rb") as file:
            response = requests.post(
                f"{server.url}/upload",
                files={"file": (path.name, file)},
                data={"sid": uploaders[number].sid, "chunk_seconds": "0.5"},
                timeout=60,
            )
        assert response.status_code == 202, response.text
        tasks[number] = response.json()["task_id"]

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(UPLOADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(tasks) == UPLOADS
        for number, listener in enumerate(uploaders):
            assert listener.wait_end(tasks[number], timeout=120)[0] == "processing_complete"
    finally:
        slowest, answers = watch.stop()
    for number, listener in enumerate(uploaders):
        assert {data["task_id"] for _, data, _ in listener.events} == {tasks[number]}
        assert [chunk["index"] for chunk in listener.chunks(tasks[number])] == list(range(6))
    # A round trip proves nothing is still in flight to the clients that uploaded nothing.
    for listener in idle:
        assert listener.client.call("unsubscribe", {"task_id": tasks[0]}, timeout=10)["ok"]
        assert [name for name, _, _ in listener.events if name in TASK_EVENTS] == []
    assert answers > 5
    assert slowest < 0.2


def test_a_short_task_is_not_held_back_by_a_long_one_before_it(make_server, listen, audio_file):
    server = make_server(WORKERS=2, MAX_ACTIVE_TASKS=2)
    listener = listen(server.url)
    heavy = "highpass=freq=10:order=8,lowpass=freq=12000:order=8,compressor"
    with open(audio_file(120.0, "flac", rate=48000), "rb") as file:
        long_task = requests.post(
            f"{server.url}/upload", files={"file": file},
            data={"sid": listener.sid, "pipeline": heavy, "chunk_seconds": "0.5"}, timeout=60,
        ).json()["task_id"]  # fmt: skip
    listener.wait_chunk(long_task, 0)
    with open(audio_file(2.0), "rb") as file:
        short_task = requests.post(
            f"{server.url}/upload", files={"file": file},
            data={"sid": listener.sid, "pipeline": heavy, "chunk_seconds": "0.5"}, timeout=60,
        ).json()["task_id"]  # fmt: skip
    assert listener.wait_end(short_task)[0] == "processing_complete"
    # The long task's chunks and the short one's took turns in the pool: the short one is
    # done while the long one still has most of its way to go.
    status = requests.get(f"{server.url}/tasks/{long_task}", timeout=10).json()
    assert status["status"] == "processing" and status["progress"] < 0.5
    requests.delete(f"{server.url}/tasks/{long_task}", timeout=10)
