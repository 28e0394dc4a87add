"""GET /metrics: Prometheus text: tasks by outcome, queue depth, chunk timings, audio emitted."""

from __future__ import annotations

import re

import pytest
from helpers import Count, music, write_wav


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in the metrics"
    return float(match.group(1))


def upload(client, path, **fields):
    data = {"file": (open(path, "rb"), path.name), **fields}  # noqa: SIM115
    return client.post("/upload", data=data, content_type="multipart/form-data")


def test_metrics_count_what_the_server_did(app, client, tmp_path, test_steps):
    wav = write_wav(tmp_path / "a.wav", music(2.0), 44100)
    engine = app.extensions["audio_engine"]
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.mimetype == "text/plain"
    assert sample(before.text, "audioserver_tasks_total", '{outcome="completed"}') == 0
    done = upload(client, wav, pipeline="gain", chunk_seconds="0.5").get_json()["task_id"]
    assert engine.get(done).retired.wait(60)
    running = upload(client, wav, pipeline="test_count").get_json()["task_id"]
    upload(client, tmp_path / "a.wav", pipeline="reverb")  # a 400
    text = client.get("/metrics").text
    assert sample(text, "audioserver_tasks_total", '{outcome="completed"}') == 1
    assert sample(text, "audioserver_active_tasks") == 1
    assert sample(text, "audioserver_queued_tasks") == 0
    assert sample(text, "audioserver_audio_processed_seconds_total") == pytest.approx(2.0)
    assert sample(text, "audioserver_emitted_audio_bytes_total") == 2 * 44100 * 2 * 2
    assert sample(text, "audioserver_chunk_processing_seconds_count") >= 4
    assert (
        sample(text, "audioserver_http_errors_total", '{error="invalid_pipeline",status="400"}')
        == 1
    )
    engine.stop(running)
    Count.gate.set()
    text = client.get("/metrics").text
    assert sample(text, "audioserver_tasks_total", '{outcome="stopped"}') == 1
    assert sample(text, "audioserver_active_tasks") == 0
