"""HTTP endpoints through Flask's test client: answers, error JSON, and nothing left behind."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import Count, music, read_wav, wav_pcm, write_wav


def engine_of(app):
    return app.extensions["audio_engine"]


def leftovers(app) -> list[str]:
    """Every file under the data directory (the uploads folder itself aside)."""
    root = Path(app.config["DATA_DIR"])
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def upload(client, path: Path | None, **fields):
    data = dict(fields)
    if path is not None:
        data["file"] = (open(path, "rb"), path.name)  # noqa: SIM115  (the client closes it)
    return client.post("/upload", data=data, content_type="multipart/form-data")


def finish(app, task_id: str) -> dict:
    """Wait until a task's threads are done with it; return its JSON."""
    assert engine_of(app).get(task_id).retired.wait(60)
    return engine_of(app).describe(engine_of(app).get(task_id))


@pytest.fixture
def wav(tmp_path) -> Path:
    # Under 500 kB: larger bodies make the test client spool them to a file it never closes.
    return write_wav(tmp_path / "song.wav", music(2.5), 44100)


def test_index_serves_the_upload_page(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert b'type="file"' in page.data and b"/static/vendor/socket.io.min.js" in page.data


def test_upload_answers_202_with_the_task_then_processes(app, client, wav):
    response = upload(client, wav, pipeline="highpass=freq=80,normalize", chunk_seconds="0.5")
    assert response.status_code == 202
    task = response.get_json()
    assert response.headers["Location"] == f"/tasks/{task['task_id']}"
    assert len(task["task_id"]) == 32 and int(task["task_id"], 16) >= 0
    assert task["status"] in ("queued", "processing")
    assert task["filename"] == "song.wav"
    assert (task["sample_rate"], task["channels"], task["chunks_total"]) == (44100, 2, 5)
    assert task["duration"] == pytest.approx(2.5)
    assert task["pipeline"] == [
        {"step": "highpass", "freq": 80.0, "order": 2},
        {"step": "normalize", "peak_db": -1.0},
    ]
    assert task["links"]["result"] == f"/tasks/{task['task_id']}/result"
    done = finish(app, task["task_id"])
    assert done["status"] == "completed" and done["chunks_done"] == 5
    assert client.get(f"/tasks/{task['task_id']}").get_json()["status"] == "completed"


def test_result_is_the_processed_wav_with_range_support(app, client, wav):
    task_id = upload(client, wav, pipeline="gain=db=-6").get_json()["task_id"]
    finish(app, task_id)
    with client.get(f"/tasks/{task_id}/result") as result:
        result.get_data()
    assert result.status_code == 200
    assert result.headers["Content-Type"] == "audio/wav"
    assert result.headers["Content-Disposition"] == 'attachment; filename="song_processed.wav"'
    samples, rate = read_wav(result.data)
    original, _ = read_wav(wav)
    assert rate == 44100 and samples.shape == original.shape
    assert abs(samples - original * 10 ** (-6 / 20)).max() < 1e-4
    with client.get(f"/tasks/{task_id}/result", headers={"Range": "bytes=44-1043"}) as partial:
        partial.get_data()
    assert partial.status_code == 206
    assert partial.data == wav_pcm(result.data)[:1000]


def test_default_pipeline_is_peak_normalise_and_empty_is_none(app, client, wav):
    default = upload(client, wav).get_json()
    assert default["pipeline"] == [{"step": "normalize", "peak_db": -1.0}]
    empty = upload(client, wav, pipeline="").get_json()
    assert empty["pipeline"] == []
    finish(app, default["task_id"])
    finish(app, empty["task_id"])
    with client.get(f"/tasks/{empty['task_id']}/result") as result:
        unchanged, _ = read_wav(result.get_data())
    assert abs(unchanged - read_wav(wav)[0]).max() <= 1 / 32767


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"pipeline": "reverb"}, "invalid_pipeline", ["unknown step", "reverb"]),
        ({"pipeline": "gain=db=99"}, "invalid_pipeline", ["'gain'", "'db'", "-60 and 40"]),
        ({"pipeline": "highpass=freq=30000"}, "invalid_pipeline", ["'freq'", "44100 Hz"]),
        ({"pipeline": '[{"step": "gain", "db": NaN}]'}, "invalid_pipeline", ["finite"]),
        ({"chunk_seconds": "0.1"}, "invalid_parameter", ["chunk_seconds", "0.25 to 60"]),
        ({"chunk_seconds": "61"}, "invalid_parameter", ["chunk_seconds"]),
        ({"chunk_seconds": "nan"}, "invalid_parameter", ["chunk_seconds"]),
        ({"chunk_seconds": "two"}, "invalid_parameter", ["chunk_seconds"]),
        ({"format": "mp4"}, "invalid_parameter", ["format must be one of"]),
        ({"stream_audio": "maybe"}, "invalid_parameter", ["stream_audio", "true or false"]),
        ({"sid": "not-a-client"}, "invalid_parameter", ["sid", "not a connected"]),
        ({"sid": "x" * 100}, "invalid_parameter", ["sid"]),
    ],
)
def test_bad_upload_parameters_are_400_and_leave_nothing(app, client, wav, fields, code, words):
    response = upload(client, wav, **fields)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == code
    for word in words:
        assert word in body["message"]
    assert leftovers(app) == []
    assert engine_of(app).health()["active_tasks"] == 0


def test_missing_file_and_empty_filename_are_400(app, client, wav):
    missing = upload(client, None, pipeline="gain")
    assert (missing.status_code, missing.get_json()["error"]) == (400, "missing_file")
    assert "file" in missing.get_json()["message"]
    empty = client.post(
        "/upload", data={"file": (io.BytesIO(b"abc"), "")}, content_type="multipart/form-data"
    )
    assert (empty.status_code, empty.get_json()["error"]) == (400, "empty_filename")
    assert leftovers(app) == []


def test_not_audio_is_415_with_ffmpegs_reason(app, client, tmp_path):
    text = tmp_path / "notes.mp3"
    text.write_text("this is a text file\n" * 50)
    response = upload(client, text)
    assert response.status_code == 415
    body = response.get_json()
    assert body["error"] == "not_audio"
    assert "could not be decoded" in body["message"] and "Invalid data" in body["message"]
    assert leftovers(app) == []


def test_too_large_is_413(make_app, tmp_path):
    app = make_app(MAX_UPLOAD_MB=0.05)
    path = write_wav(tmp_path / "big.wav", music(1.0), 44100)  # 176 kB
    response = upload(app.test_client(), path)
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert "0.05 MB" in response.get_json()["message"]
    assert leftovers(app) == []


def test_at_capacity_is_503_with_retry_after(make_app, wav, test_steps):
    app = make_app(WORKERS=1, MAX_ACTIVE_TASKS=1, MAX_QUEUED_TASKS=1)
    client = app.test_client()
    running = upload(client, wav, pipeline="test_count").get_json()
    waiting = upload(client, wav).get_json()
    assert waiting["status"] == "queued"
    refused = upload(client, wav)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.get_json()["error"] == "at_capacity"
    assert client.get("/healthz").get_json() == {
        "status": "ok",
        "workers": 1,
        "active_tasks": 1,
        "queued_tasks": 1,
    }
    Count.gate.set()
    assert finish(app, running["task_id"])["status"] == "completed"
    assert finish(app, waiting["task_id"])["status"] == "completed"
    assert not [name for name in leftovers(app) if name.startswith("uploads")]


def test_result_of_an_unfinished_or_failed_task_is_409(app, client, wav, test_steps):
    running = upload(client, wav, pipeline="test_count").get_json()["task_id"]
    response = client.get(f"/tasks/{running}/result")
    assert response.status_code == 409
    assert response.get_json() | {"message": ""} == {
        "error": "task_not_ready",
        "status": "processing",
        "message": "",
    }
    Count.gate.set()
    failed = upload(client, wav, pipeline="test_explode=at=0").get_json()["task_id"]
    assert finish(app, failed)["status"] == "failed"
    response = client.get(f"/tasks/{failed}/result")
    assert (response.status_code, response.get_json()["error"]) == (409, "task_failed")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "bad_json"),
        (b"", 400, "bad_json"),
        (b"[1, 2]", 400, "invalid_parameter"),
        (b'"abc"', 400, "invalid_parameter"),
        (b"{}", 400, "invalid_parameter"),
        (b'{"task_id": 5}', 400, "invalid_parameter"),
        (b'{"task_id": null}', 400, "invalid_parameter"),
        (b'{"task_id": "nope"}', 404, "task_not_found"),
        (b'{"task_id": "' + b"f" * 10000 + b'"}', 404, "task_not_found"),
    ],
)
def test_stop_processing_rejects_bad_bodies(client, body, status, code):
    response = client.post(
        "/stop-processing", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert response.get_json()["error"] == code
    assert len(response.get_data()) < 1000  # a long id is not echoed back


def test_stop_processing_stops_and_repeats_and_conflicts(app, client, wav, test_steps):
    task_id = upload(client, wav, pipeline="test_count").get_json()["task_id"]
    for _ in range(2):
        response = client.post("/stop-processing", json={"task_id": task_id})
        assert response.status_code == 200
        assert response.get_json() == {
            "message": "Processing stopped",
            "task_id": task_id,
            "status": "stopped",
        }
    Count.gate.set()
    assert finish(app, task_id)["status"] == "stopped"
    with client.get(f"/tasks/{task_id}/result") as partial:
        assert partial.status_code == 200  # the partial result
    done = upload(client, wav, pipeline="gain").get_json()["task_id"]
    finish(app, done)
    conflict = client.post("/stop-processing", json={"task_id": done})
    assert conflict.status_code == 409
    assert conflict.get_json()["status"] == "completed"


def test_delete_task(app, client, wav):
    task_id = upload(client, wav, pipeline="gain").get_json()["task_id"]
    finish(app, task_id)
    assert client.delete(f"/tasks/{task_id}").status_code == 200
    for path in (f"/tasks/{task_id}", f"/tasks/{task_id}/result"):
        assert client.get(path).status_code == 404
    assert client.delete(f"/tasks/{task_id}").status_code == 404
    assert leftovers(app) == []


def test_pipeline_steps_catalogue(client):
    catalogue = client.get("/pipeline/steps").get_json()
    names = [step["name"] for step in catalogue["steps"]]
    assert names == [
        "gain", "normalize", "loudness", "highpass", "lowpass", "bandpass",
        "fade_in", "fade_out", "resample", "mono", "compressor",
    ]  # fmt: skip
    highpass = catalogue["steps"][3]
    assert highpass["kind"] == "stateful"
    freq = highpass["parameters"][0]
    assert freq | {"description": ""} == {
        "name": "freq",
        "type": "number",
        "default": None,
        "required": True,
        "min": 10.0,
        "max": 94080.0,
        "max_rate_fraction": 0.49,
        "unit": "Hz",
        "description": "",
    }
    assert catalogue["max_steps"] == 32
    assert catalogue["chunk_seconds"] == {"min": 0.25, "max": 60.0, "default": 2.0}
    assert catalogue["max_upload_bytes"] == 500 * 1024 * 1024


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/nowhere", 404),
        ("get", "/tasks/unknown", 404),
        ("delete", "/tasks/unknown", 404),
        ("get", "/tasks/unknown/result", 404),
        ("get", "/upload", 405),
        ("post", "/healthz", 405),
        ("put", "/stop-processing", 405),
    ],
)
def test_unknown_paths_and_methods_are_json(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.is_json
    assert set(response.get_json()) >= {"error", "message"}
