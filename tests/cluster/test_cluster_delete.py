"""DELETE in cluster mode: the files go once the worker that has the task lets it go.

The web instance runs in this process, on a real redis-server; the test plays
the worker by hand (its claim on the task, then its letting go), so that the
moment between a task's end and its worker's retirement, where a DELETE used
to leave the folder behind for good, is held as long as the test needs.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import requests
from helpers import Recorder

from audioserver import cluster
from bench.harness import WorkerProcess


@pytest.fixture
def web(redis_server, make_app):
    """A web instance with no worker process: the test is the worker."""
    app = make_app(REDIS_URL=redis_server.url)
    engine = app.extensions["audio_engine"]
    engine.publisher = Recorder()
    return app, engine


def queued_task(app, audio_file) -> str:
    path: Path = audio_file(1.0)
    data = {"file": (path.open("rb"), path.name), "pipeline": "gain=db=-3"}
    response = app.test_client().post("/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    task_id: str = response.get_json()["task_id"]
    return task_id


def claim(redis_server, task_id: str) -> None:
    """What a worker does when it takes a task: its claim (the lease), as its own."""
    redis_server.client.set(cluster.owner_key(task_id), "fake-worker", ex=60)


def let_go(redis_server, task_id: str) -> None:
    """What a worker does when nothing of the task runs there any more (Worker._retired)."""
    client = redis_server.client
    client.xadd(cluster.log_key(task_id), {"retired": "1"})
    client.publish(cluster.EVENTS, task_id)
    client.delete(cluster.owner_key(task_id))


def test_delete_waits_for_the_worker_to_let_go_then_removes_the_files(
    web, redis_server, audio_file
):
    app, engine = web
    task_id = queued_task(app, audio_file)
    folder = engine.get(task_id).folder
    claim(redis_server, task_id)
    stops = redis_server.client.pubsub(ignore_subscribe_messages=True)
    stops.subscribe(cluster.STOPS)
    deleting = threading.Thread(target=engine.delete, args=(task_id,))
    deleting.start()
    # The worker is told to stop the task, for its deletion...
    message = None
    while message is None:
        message = stops.get_message(timeout=10)
    assert json.loads(message["data"]) == {"task_id": task_id, "reason": "deleted"}
    stops.close()
    # ...and until it lets the task go, the DELETE waits and the files stay (it may write).
    deleting.join(0.3)
    assert deleting.is_alive() and folder.exists()
    let_go(redis_server, task_id)
    deleting.join(10)
    assert not deleting.is_alive()
    assert not folder.exists(), "the files are gone when the DELETE answers"
    assert app.test_client().get(f"/tasks/{task_id}").status_code == 404
    assert not redis_server.client.exists(cluster.task_key(task_id))


def test_a_worker_that_does_not_let_go_keeps_the_files_and_is_named(
    web, redis_server, audio_file, monkeypatch, caplog
):
    monkeypatch.setattr(cluster, "RETIRE_WAIT_SECONDS", 0.2)
    app, engine = web
    task_id = queued_task(app, audio_file)
    folder = engine.get(task_id).folder
    claim(redis_server, task_id)
    with caplog.at_level(logging.WARNING):
        assert app.test_client().delete(f"/tasks/{task_id}").status_code == 200
    # The task is gone from the cluster; its worker, when it lets go, finds its key gone and
    # removes the files itself (not removed under it while it may still write them).
    assert app.test_client().get(f"/tasks/{task_id}").status_code == 404
    assert folder.exists()
    assert any("did not let the task go" in record.getMessage() for record in caplog.records)


def test_a_worker_that_finds_its_task_deleted_when_it_lets_go_removes_the_files(
    redis_server, make_server, audio_file, tmp_path
):
    server = make_server(REDIS_URL=redis_server.url)  # a real upload over HTTP: 20 MB of WAV
    engine = server.engine
    recorder = engine.publisher = Recorder()
    worker = WorkerProcess(redis_url=redis_server.url, data_dir=tmp_path / "data",
                           log=tmp_path / "worker.log")  # fmt: skip
    try:
        worker.wait_until_alive(redis_server.client)
        path = audio_file(120.0)
        with path.open("rb") as file:
            response = requests.post(
                f"{server.url}/upload", files={"file": (path.name, file)}, timeout=60,
                data={"chunk_seconds": "0.25",
                      "pipeline": "highpass=freq=80,compressor,loudness=target=-16"},
            )  # fmt: skip
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        listener = recorder.connect("listener")
        engine.subscribe(task_id, listener)
        recorder.wait_chunks(listener, task_id, 1)  # the worker runs it
        folder = engine.get(task_id).folder
        # The task is forgotten by the cluster while its worker still runs it, as when a
        # DELETE's wait for the worker ran out: the worker was not told.
        engine.cluster_store.remove(task_id)
        worker.process.terminate()  # it stops its tasks (reason shutdown) and lets them go
        assert worker.process.wait(20) == 0
        assert not folder.exists(), "the worker removed the files of a task deleted under it"
    finally:
        worker.close()


def test_the_follower_passes_progress_on_in_both_forms_a_worker_publishes(redis_server):
    """processing_progress from Redis: today's form (with stage_end), and the bare event of a
    worker of the version before (during a rolling upgrade), which ends no stage."""
    follower = cluster.LogFollower(cluster.connect(redis_server.url))
    received: list[tuple[dict, bool]] = []
    changed = threading.Condition()

    def on_progress(data: dict, stage_end: bool) -> None:
        with changed:
            received.append((data, stage_end))
            changed.notify_all()

    follower.on_progress = on_progress
    try:
        event = {"task_id": "t", "stage": 0, "chunks_emitted": 0}
        # The follower has subscribed when it is made: what is published now reaches it.
        redis_server.client.publish(
            cluster.PROGRESS, json.dumps({"data": event, "stage_end": True})
        )
        redis_server.client.publish(cluster.PROGRESS, json.dumps(event))
        with changed:
            assert changed.wait_for(lambda: len(received) == 2, timeout=10), received
        assert received[0] == (event, True)
        assert received[1] == (event, False)
    finally:
        follower.stop()
