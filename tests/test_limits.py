"""What one upload may cost: decoded size (decompression bombs), pre-roll per chunk."""

from __future__ import annotations

import math
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import Count, music, write_wav

from audioserver.audio.meter import OutputMeter
from audioserver.audio.pipeline import Pipeline
from audioserver.audio.steps import Block, Step
from audioserver.storage import expected_bytes

RATE = 8000
LIMIT = RATE * 2 * 3  # 3 s of 8 kHz stereo


def upload(client, path: Path, **fields):
    data = {"file": (open(path, "rb"), path.name), "chunk_seconds": "0.5", **fields}  # noqa: SIM115
    return client.post("/upload", data=data, content_type="multipart/form-data")


def piped_flac(ffmpeg: str, seconds: float, path: Path) -> Path:
    """A FLAC written to a pipe: its header cannot say how long it is (total samples 0)."""
    wav = write_wav(path.with_suffix(".wav"), music(seconds, rate=RATE, channels=2), RATE)
    flac = subprocess.run(
        [ffmpeg, "-v", "error", "-f", "wav", "-i", "pipe:0", "-f", "flac", "pipe:1"],
        input=wav.read_bytes(),
        capture_output=True,
        check=True,
    ).stdout
    path.write_bytes(flac)
    return path


def test_an_upload_whose_header_announces_too_many_samples_is_refused_at_once(make_app, tmp_path):
    app = make_app(MAX_AUDIO_SAMPLES=LIMIT)
    path = write_wav(tmp_path / "long.wav", music(5.0, rate=RATE, channels=2), RATE)
    response = upload(app.test_client(), path)
    assert response.status_code == 413
    body = response.get_json()
    assert body["error"] == "too_much_audio"
    assert f"{LIMIT:,} samples" in body["message"] and "Split the file" in body["message"]
    data = Path(app.config["DATA_DIR"])
    assert [p.name for p in data.iterdir()] == ["uploads"]  # nothing left behind
    assert list((data / "uploads").iterdir()) == []


def test_a_task_that_decodes_past_the_limit_fails_and_stops_decoding(make_app, tmp_path, ffmpeg):
    app = make_app(MAX_AUDIO_SAMPLES=LIMIT)
    path = piped_flac(ffmpeg, 10.0, tmp_path / "bomb.flac")  # < 500 kB: see test_routes.py
    response = upload(app.test_client(), path, pipeline="normalize")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["input"]["duration"] is None  # the header did not say
    engine = app.extensions["audio_engine"]
    task = engine.get(response.get_json()["task_id"])
    assert task.retired.wait(30)
    described = engine.describe(task)
    assert described["status"] == "failed"
    assert described["error"]["error"] == "too_much_audio"
    assert task.terminal[0] == "processing_error"
    # Decoding stopped within a couple of chunks of the limit, not at the end of the file.
    assert task.decoder.frames_read <= LIMIT // 2 + 3 * RATE // 2
    assert not list(task.folder.glob("spool-*")) and not (task.folder / "upload").exists()


@pytest.mark.parametrize("seconds", [2.0, 3.0])
def test_audio_up_to_the_limit_is_processed(make_app, tmp_path, ffmpeg, seconds):
    app = make_app(MAX_AUDIO_SAMPLES=LIMIT)
    path = piped_flac(ffmpeg, seconds, tmp_path / "fine.flac")
    response = upload(app.test_client(), path)
    assert response.status_code == 202
    engine = app.extensions["audio_engine"]
    task = engine.get(response.get_json()["task_id"])
    assert task.retired.wait(30)
    assert engine.describe(task)["status"] == "completed"


def test_a_wav_header_claiming_2_ghz_is_refused_with_the_range(make_app, tmp_path):
    path = write_wav(tmp_path / "fast.wav", music(0.5, rate=RATE, channels=2), RATE)
    header = bytearray(path.read_bytes())
    header[24:28] = (2_000_000_000).to_bytes(4, "little")  # the fmt chunk's sample rate
    header[28:32] = (0xFFFFFFFF).to_bytes(4, "little")  # bytes a second: as big as it goes
    path.write_bytes(bytes(header))
    response = upload(make_app().test_client(), path)
    assert response.status_code == 415, response.get_json()
    assert "sample rate" in response.get_json()["message"]


class LongMemory(Step):
    """A test step with 10 s of memory (pre-roll) that counts the frames it processes."""

    name = "test_long_memory"
    description = "remembers 10 s, counts frames"
    kind = "stateful"
    frames = 0
    lock = threading.Lock()

    def pre_roll(self) -> int:
        return 10 * self.sample_rate

    def process(self, block: Block) -> Block:
        with LongMemory.lock:
            LongMemory.frames += len(block.samples)
        return block


Step.registry.pop(LongMemory.name)


@pytest.fixture
def long_memory():
    Step.registry[LongMemory.name] = LongMemory
    LongMemory.frames = 0
    yield
    Step.registry.pop(LongMemory.name)


@pytest.mark.parametrize("chunk_seconds", [0.25, 2.0, 30.0])
def test_long_pre_roll_does_not_scale_with_the_number_of_chunks(
    make_app, tmp_path, long_memory, chunk_seconds
):
    app = make_app()
    path = write_wav(tmp_path / "a.wav", music(30.0, rate=RATE, channels=1), RATE)
    response = upload(
        app.test_client(), path, pipeline="test_long_memory", chunk_seconds=str(chunk_seconds)
    )
    engine = app.extensions["audio_engine"]
    task = engine.get(response.get_json()["task_id"])
    assert task.retired.wait(60)
    described = engine.describe(task)
    assert described["status"] == "completed"
    assert described["chunks_done"] == math.ceil(30.0 / chunk_seconds)  # chunks as asked
    # One job per chunk would process 10 s of pre-roll per chunk (1,230 s for 0.25 s
    # chunks); jobs of several chunks process at most about twice the audio.
    assert LongMemory.frames <= 2 * 30 * RATE + 10 * RATE


AMPLIFIERS = [
    ",".join(["resample=rate=192000", "resample=rate=8000"] * 16),
    "resample=rate=192000," + ",".join(["highpass=freq=10:order=8"] * 31),
]


@pytest.mark.parametrize("pipeline", AMPLIFIERS)
def test_a_pipeline_over_the_cpu_budget_is_refused_with_what_it_would_cost(
    make_app, tmp_path, pipeline
):
    app = make_app()
    path = write_wav(tmp_path / "clip.wav", music(2.5, rate=44100), 44100)  # < 500 kB
    response = upload(app.test_client(), path, pipeline=pipeline, chunk_seconds="0.25")
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "pipeline_too_costly"
    assert "CPU seconds per second of audio" in body["message"]
    assert "the server allows 1" in body["message"] and "resample" in body["message"]
    data = Path(app.config["DATA_DIR"])
    assert [p.name for p in data.iterdir()] == ["uploads"]


def test_the_cpu_budget_is_a_setting(make_app, tmp_path):
    path = write_wav(tmp_path / "clip.wav", music(1.0, rate=44100), 44100)
    strict = make_app(MAX_PIPELINE_COST=0.01).test_client()
    response = upload(strict, path, pipeline="highpass=freq=80,compressor,loudness")
    assert response.status_code == 400
    assert "compressor" in response.get_json()["message"]
    assert upload(strict, path, pipeline="gain=db=-1").status_code == 202


def test_a_short_clip_completes_while_two_heavy_tasks_run(make_app, tmp_path):
    app = make_app(WORKERS=2)
    client = app.test_client()
    engine = app.extensions["audio_engine"]
    heavy_input = write_wav(tmp_path / "long.wav", music(30.0, rate=8000, channels=1), 8000)
    heavy = "resample=rate=192000,compressor,highpass=freq=80:order=8,loudness"
    heavies = []
    for _ in range(2):
        response = upload(client, heavy_input, pipeline=heavy, chunk_seconds="0.25")
        assert response.status_code == 202, response.get_json()
        heavies.append(engine.get(response.get_json()["task_id"]))
    clip = write_wav(tmp_path / "clip.wav", music(30.0, rate=8000, channels=1), 8000)
    response = upload(client, clip, pipeline="highpass=freq=80,normalize")
    task = engine.get(response.get_json()["task_id"])
    assert task.retired.wait(120)
    assert engine.describe(task)["status"] == "completed"
    # The clip got its share of the pool (a third), not a third of the jobs: it is done
    # while the heavy tasks, whose jobs each cost a hundred of its own, have barely begun.
    progress = [engine.describe(other) for other in heavies]
    assert [other["status"] for other in progress] == ["processing"] * 2
    assert max(other["progress"] for other in progress) < 0.5, progress  # FIFO: 0.8 to 1
    for other in heavies:
        engine.stop(other.id)


def _needed(spec: str, seconds: float = 2.5) -> int:
    """What the engine expects a task of this file and pipeline to write."""
    stages = Pipeline.parse(spec).plan(44100, 2, output_pre_roll=OutputMeter.pre_roll)
    return expected_bytes(seconds=seconds, stages=stages, chunk_seconds=0.5, encoded=False)


def test_max_data_mb_counts_what_running_tasks_will_write(make_app, tmp_path, test_steps):
    path = write_wav(tmp_path / "clip.wav", music(2.5, rate=44100), 44100)  # < 500 kB
    cap = 2.5 * _needed("gain")  # one task and its upload fit, not two
    app = make_app(MAX_DATA_MB=cap / 1024 / 1024, WORKERS=1)
    client = app.test_client()
    engine = app.extensions["audio_engine"]
    running = upload(client, path, pipeline="test_count")
    assert running.status_code == 202
    Count.wait_for(1)  # it runs, and has most of its result still to write
    refused = upload(client, path, pipeline="gain")
    assert refused.status_code == 507
    assert refused.get_json()["error"] == "insufficient_storage"
    assert "MAX_DATA_MB" in refused.get_json()["message"]
    Count.gate.set()
    assert engine.get(running.get_json()["task_id"]).retired.wait(30)
    assert upload(client, path, pipeline="gain").status_code == 202


def test_finished_results_leave_room_under_max_data_mb_for_the_sweeper(make_app, tmp_path):
    path = write_wav(tmp_path / "clip.wav", music(2.5, rate=44100), 44100)
    app = make_app(MAX_DATA_MB=2.5 * _needed("gain") / 1024 / 1024, SWEEP_SECONDS=0)
    client = app.test_client()
    engine = app.extensions["audio_engine"]
    done = []
    for _ in range(3):  # three results do not fit under the cap together
        response = upload(client, path, pipeline="gain")
        assert response.status_code == 202  # finished results do not block a task
        done.append(response.get_json()["task_id"])
        assert engine.get(done[-1]).retired.wait(30)
    assert engine.sweep() == done[:1]  # the sweeper deletes the oldest to get under the cap
    assert client.get(f"/tasks/{done[0]}").status_code == 404
