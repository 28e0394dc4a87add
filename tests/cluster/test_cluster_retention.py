"""Retention in cluster mode: one web instance at a time sweeps the cluster's finished tasks.

Two web instances run in this process, on a real redis-server and one data
folder. Their tasks end without a worker (stopped before any worker took
them, which the web instance does itself), so nothing here needs the CPU of
a worker; the sweep is the same for any finished task.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from audioserver.cluster import SWEEPER, TASKS
from audioserver.storage import folder_bytes
from audioserver.task import now


def finished_task(app, path: Path) -> str:
    """Upload a file and stop its task before a worker takes it: a finished task."""
    client = app.test_client()
    data = {"file": (path.open("rb"), path.name), "chunk_seconds": "0.5"}
    response = client.post("/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    task_id: str = response.get_json()["task_id"]
    stopped = client.post("/stop-processing", json={"task_id": task_id})
    assert stopped.get_json()["status"] == "stopped"
    return task_id


def queued_task(app, path: Path) -> str:
    client = app.test_client()
    data = {"file": (path.open("rb"), path.name)}
    response = client.post("/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    task_id: str = response.get_json()["task_id"]
    return task_id


def gone_everywhere(redis_client, data_dir: Path, task_id: str) -> bool:
    """No key of the task in Redis, no folder, and not among the cluster's tasks."""
    keys = list(redis_client.scan_iter(f"*{task_id}*"))
    return (
        not keys
        and not (data_dir / task_id).exists()
        and not redis_client.sismember(TASKS, task_id)
    )


def two_instances(make_app, redis_url: str, **settings):
    settings = {"REDIS_URL": redis_url, "MAX_QUEUED_TASKS": 16, "SWEEP_SECONDS": 0, **settings}
    a, b = make_app(**settings), make_app(**settings)
    return a, b, a.extensions["audio_engine"], b.extensions["audio_engine"]


def test_one_instance_sweeps_expired_tasks_of_the_whole_cluster(
    redis_server, make_app, audio_file, tmp_path
):
    a, b, engine_a, engine_b = two_instances(make_app, redis_server.url, RESULT_TTL_HOURS=1)
    data_dir = tmp_path / "data"
    ended = [finished_task((a, b)[number % 2], audio_file(1.0)) for number in range(4)]
    running = queued_task(a, audio_file(1.0))
    old_orphan, young_orphan = data_dir / ("ab" * 16), data_dir / ("cd" * 16)
    for orphan in (old_orphan, young_orphan):
        orphan.mkdir()
        (orphan / "result.wav").write_bytes(b"RIFF")
    later = now() + timedelta(hours=2)
    # Folders no task names: one changed two days before the sweep, one half an hour before.
    for orphan, age in ((old_orphan, timedelta(days=2)), (young_orphan, timedelta(minutes=30))):
        changed = (later - age).timestamp()
        os.utime(orphan, (changed, changed))
    assert engine_a.sweeper.sweep(moment=later) is not None  # A takes the lock and sweeps
    assert engine_b.sweeper.sweep(moment=later) is None, "one instance at a time"
    for task_id in ended:
        assert gone_everywhere(redis_server.client, data_dir, task_id)
        for app in (a, b):
            assert app.test_client().get(f"/tasks/{task_id}").status_code == 404
    # A task that has not ended is kept, and so is a folder that may be an upload under way.
    assert b.test_client().get(f"/tasks/{running}").get_json()["status"] == "queued"
    assert (data_dir / running).exists()
    assert not old_orphan.exists() and young_orphan.exists()
    assert engine_a.swept.is_set() and not engine_b.swept.is_set()
    # An instance that shuts down lets another sweep.
    engine_a.shutdown()
    assert engine_b.sweeper.sweep() is not None
    assert redis_server.client.get(SWEEPER).decode() == engine_b.sweeper.name


def test_the_oldest_finished_tasks_go_while_the_shared_folder_is_over_its_cap(
    redis_server, make_app, audio_file, tmp_path
):
    # Four finished tasks of a 1 s WAV upload each (about 0.17 MB a folder); a 0.45 MB cap.
    a, b, _, engine_b = two_instances(make_app, redis_server.url, MAX_DATA_MB=0.45)
    data_dir, cap = tmp_path / "data", 0.45 * 2**20
    ended = [finished_task((a, b)[number % 2], audio_file(1.0)) for number in range(4)]
    each = folder_bytes(data_dir / ended[0])
    assert 2 * each < cap < 3 * each, "the sizes this test assumes"
    assert engine_b.sweeper.sweep() == ended[:2], "the two oldest, the rest under the cap"
    assert all(gone_everywhere(redis_server.client, data_dir, task) for task in ended[:2])
    assert folder_bytes(data_dir) <= cap
    for task_id in ended[2:]:
        assert a.test_client().get(f"/tasks/{task_id}").get_json()["status"] == "stopped"


def test_a_dead_sweeper_is_replaced_once_its_lock_lapses(
    redis_server, make_app, audio_file, tmp_path
):
    # An instance that died while it held the lock: the lock lapses by itself.
    redis_server.client.set(SWEEPER, "a-dead-instance", px=3000)
    app = make_app(REDIS_URL=redis_server.url, SWEEP_SECONDS=0.2, RESULT_TTL_HOURS=1e-6)
    engine = app.extensions["audio_engine"]
    task_id = finished_task(app, audio_file(1.0))
    assert engine.sweeper.sweep() is None, "the dead instance's lock still holds"
    assert (tmp_path / "data" / task_id).exists()
    # This instance's sweeper takes over when the lock lapses, and sweeps the expired task.
    assert engine.swept.wait(30), "a live instance took the lock"
    assert redis_server.client.get(SWEEPER).decode() == engine.sweeper.name
    assert gone_everywhere(redis_server.client, tmp_path / "data", task_id)
