"""Finished tasks survive a restart; crash leftovers, expired and excess results are removed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
from helpers import Count, music, write_wav

from audioserver.task import now


def upload(client, path: Path, **fields) -> str:
    data = {"file": (open(path, "rb"), path.name), **fields}  # noqa: SIM115
    response = client.post("/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


def finish(app, task_id: str) -> None:
    assert app.extensions["audio_engine"].get(task_id).retired.wait(60)


def result_bytes(client, task_id: str) -> bytes:
    with client.get(f"/tasks/{task_id}/result") as response:
        assert response.status_code == 200
        return response.get_data()


def test_finished_tasks_are_served_again_after_a_restart(make_app, tmp_path):
    wav = write_wav(tmp_path / "a.wav", music(2.0), 44100)
    first = make_app()
    client = first.test_client()
    done = upload(client, wav, pipeline="gain=db=-3", format="flac", chunk_seconds="0.5")
    finish(first, done)
    described = client.get(f"/tasks/{done}").get_json()
    result = result_bytes(client, done)
    waveform = client.get(f"/tasks/{done}/waveform.json").get_json()
    first.extensions["audio_engine"].shutdown()

    second = make_app()  # same data directory
    client = second.test_client()
    assert client.get(f"/tasks/{done}").get_json() == described
    assert result_bytes(client, done) == result
    assert client.get(f"/tasks/{done}/waveform.json").get_json() == waveform
    # And the stored chunks replay to a new subscriber.
    engine = second.extensions["audio_engine"]
    task = engine.get(done)
    meta, pcm = task.store.read(3)
    assert meta["index"] == 3 and len(pcm) == 0.5 * 44100 * 2 * 2
    assert task.terminal[0] == "processing_complete"


def test_a_stopped_tasks_partial_result_survives_a_restart(make_app, tmp_path, test_steps):
    wav = write_wav(tmp_path / "a.wav", music(2.5), 44100)  # < 500 kB: see test_routes.py
    first = make_app(WORKERS=1)
    client = first.test_client()
    task_id = upload(client, wav, pipeline="test_jitter", chunk_seconds="0.25")
    engine = first.extensions["audio_engine"]
    engine.stop(task_id)
    finish(first, task_id)
    partial = result_bytes(client, task_id)
    first.extensions["audio_engine"].shutdown()
    second = make_app()
    client = second.test_client()
    assert client.get(f"/tasks/{task_id}").get_json()["status"] == "stopped"
    assert result_bytes(client, task_id) == partial


def test_startup_removes_what_a_crash_left_half_written(make_app, tmp_path):
    data = tmp_path / "data"
    crashed = data / ("ab" * 16)
    crashed.mkdir(parents=True)
    (crashed / "result.wav").write_bytes(b"RIFF....")
    (crashed / "spool-0.f32").write_bytes(b"\0" * 100)
    (data / "uploads").mkdir()
    (data / "uploads" / "upload-x.part").write_bytes(b"half an upload")
    broken = data / ("cd" * 16)
    broken.mkdir()
    (broken / "task.json").write_text("{not json")
    foreign = data / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not the server's")
    make_app()
    assert not crashed.exists() and not broken.exists()
    assert list((data / "uploads").iterdir()) == []
    assert (foreign / "keep.txt").exists()  # only uuid folders are the server's


def test_results_expire_after_their_time_to_live(make_app, tmp_path, test_steps):
    wav = write_wav(tmp_path / "a.wav", music(1.0), 44100)
    app = make_app(RESULT_TTL_HOURS=1.0, SWEEP_SECONDS=0)
    client = app.test_client()
    engine = app.extensions["audio_engine"]
    finished = upload(client, wav, pipeline="gain")
    finish(app, finished)
    running = upload(client, wav, pipeline="test_count")
    assert engine.sweep(moment=now() + timedelta(minutes=59)) == []
    assert engine.sweep(moment=now() + timedelta(hours=1, seconds=1)) == [finished]
    assert client.get(f"/tasks/{finished}").status_code == 404
    assert not (Path(app.config["DATA_DIR"]) / finished).exists()
    assert client.get(f"/tasks/{running}").get_json()["status"] == "processing"
    Count.gate.set()


def test_the_oldest_results_go_first_when_the_data_folder_is_over_its_cap(make_app, tmp_path):
    wav = write_wav(tmp_path / "a.wav", np.zeros((44100, 2)) + 0.1, 44100)
    app = make_app(MAX_DATA_MB=0.5, SWEEP_SECONDS=0)  # each task keeps ~0.2 MB of results
    client = app.test_client()
    engine = app.extensions["audio_engine"]
    task_ids = []
    for _ in range(4):
        task_ids.append(upload(client, wav, pipeline="gain"))
        finish(app, task_ids[-1])
    swept = engine.sweep()
    assert swept == task_ids[: len(swept)] and 1 <= len(swept) < 4  # oldest first, not all
    data = Path(app.config["DATA_DIR"])
    assert sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) <= 0.5 * 1024 * 1024
    assert client.get(f"/tasks/{task_ids[-1]}").status_code == 200


def test_the_sweeper_runs_by_itself(make_app, tmp_path):
    wav = write_wav(tmp_path / "a.wav", music(0.5), 44100)
    app = make_app(RESULT_TTL_HOURS=0.0, SWEEP_SECONDS=0.05)
    client = app.test_client()
    engine = app.extensions["audio_engine"]
    task_id = upload(client, wav)
    finish(app, task_id)
    engine.swept.clear()
    assert engine.swept.wait(10)
    assert client.get(f"/tasks/{task_id}").status_code == 404
