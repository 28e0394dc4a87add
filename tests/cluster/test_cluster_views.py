"""A web instance's views of the cluster's tasks: bounded, and made again from Redis on demand.

The web instance runs in this process (its engine is looked at directly);
the worker is ``python app.py worker`` in its own process, on a real
redis-server, sharing the data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import Recorder, wav_pcm

from audioserver import cluster
from bench.harness import WorkerProcess

TASKS = 6
IDLE = 2  # IDLE_VIEWS for the test: fewer than the tasks


@pytest.fixture
def web_and_worker(redis_server, make_app, tmp_path: Path):
    """A web instance (in process, its clients a Recorder) and one worker process."""
    app = make_app(REDIS_URL=redis_server.url, MAX_QUEUED_TASKS=TASKS)
    worker = WorkerProcess(redis_url=redis_server.url, data_dir=tmp_path / "data",
                           log=tmp_path / "worker.log")  # fmt: skip
    try:
        worker.wait_until_alive(redis_server.client)
        engine = app.extensions["audio_engine"]
        engine.publisher = Recorder()
        yield app, engine
    finally:
        worker.close()


def upload(client, path: Path) -> str:
    data = {"file": (path.open("rb"), path.name), "pipeline": "gain=db=-3", "chunk_seconds": "0.5"}
    response = client.post("/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    task_id: str = response.get_json()["task_id"]
    return task_id


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_finished_tasks_views_are_bounded_and_made_again_on_demand(
    web_and_worker, audio_file, monkeypatch
):
    monkeypatch.setattr(cluster, "IDLE_VIEWS", IDLE)
    app, engine = web_and_worker
    client, recorder = app.test_client(), engine.publisher
    live = recorder.connect("live")
    # Files under 500 kB: Werkzeug's test client spools a larger body to a file it leaves open.
    task_ids = [upload(client, audio_file(1.0 + 0.2 * number)) for number in range(TASKS)]
    for task_id in task_ids:
        engine.subscribe(task_id, live)
    for task_id in task_ids:
        assert recorder.wait_end(live, task_id)[0] == "processing_complete"
        assert engine.get(task_id).retired.wait(30), "the worker let the task go"
    files = open_files()
    store = engine.cluster_store
    assert store.views() <= IDLE, "every task finished and none is read: few views are kept"
    assert engine.follower.watching() <= IDLE
    # Each task still answers: its JSON, its result, and a replay of all its chunks.
    for task_id in task_ids:
        described = client.get(f"/tasks/{task_id}").get_json()
        assert described["status"] == "completed"
        with client.get(f"/tasks/{task_id}/result") as response:
            assert response.status_code == 200
            result = wav_pcm(response.get_data())
        replay = recorder.connect(f"replay-{task_id}")
        engine.subscribe(task_id, replay)
        assert recorder.wait_end(replay, task_id)[0] == "processing_complete"
        chunks = recorder.chunks(replay, task_id)
        assert [chunk["index"] for chunk in chunks] == list(range(described["chunks_done"]))
        assert b"".join(chunk["audio"] for chunk in chunks) == result
        assert chunks == recorder.chunks(live, task_id)
        assert store.views() <= IDLE + 1  # this one, until its cursor has ended
    assert store.views() <= IDLE
    assert engine.follower.watching() <= IDLE
    assert engine.delivery.serving(task_ids[-1]) == 0
    assert open_files() <= files + 2 * IDLE, "the views let go closed their files"
