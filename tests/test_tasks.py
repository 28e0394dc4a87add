"""The task engine: seamless chunked output, ordered emission, stop, failure, replay, capacity."""

from __future__ import annotations

import itertools
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import Count, Recorder, music, noise, pcm16, read_wav, write_wav
from scipy import signal

from audioserver.audio.pipeline import Pipeline
from audioserver.exceptions import (
    AtCapacity,
    DecodeError,
    ParameterError,
    TaskConflict,
    TaskNotFound,
)
from audioserver.tasks import TaskEngine, TaskOptions

RATE = 44100


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_engine(tmp_path, ffmpeg, recorder):
    engines = []

    def make(**options) -> TaskEngine:
        settings = {"workers": 2, "max_active": 4, "max_queued": 8, "stall_seconds": 10.0}
        settings.update(options)
        engine = TaskEngine(
            data_dir=tmp_path / f"data{len(engines)}",
            ffmpeg=ffmpeg,
            publisher=recorder,
            **settings,
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


@pytest.fixture
def source(tmp_path):
    """Write a WAV once; each call returns a fresh copy to hand to the engine (which moves it)."""
    counter = itertools.count()

    def make(samples: np.ndarray, rate: int = RATE) -> Path:
        original = tmp_path / f"source-{next(counter)}.wav"
        write_wav(original, samples, rate)
        return original

    return make


def submit(engine, path: Path, spec: str | None = "", *, sid: str | None = None, **options):
    upload = path.with_name(f"upload-{time.monotonic_ns()}")
    shutil.copy(path, upload)
    return engine.create(
        upload,
        filename=path.name,
        options=TaskOptions(pipeline=Pipeline.parse(spec), **options),
        subscriber=sid,
    )


def run_task(engine, recorder, path, spec, **options) -> tuple[np.ndarray, list[dict]]:
    """Run a task to completion; return the result (float) and the chunks the client got."""
    sid = recorder.connect(f"client-{time.monotonic_ns()}")
    task = submit(engine, path, spec, sid=sid, **options)
    event, data = recorder.wait_end(sid, task.id)
    assert event == "processing_complete", data
    result, _ = read_wav(task.store.path)
    return result, recorder.chunks(sid, task.id)


def reference(path: Path, spec: str) -> np.ndarray:
    """The whole file processed in one piece, as 16-bit output."""
    x, rate = read_wav(path)
    y, _ = Pipeline.parse(spec)(x, rate)
    return np.rint(np.clip(y, -1, 1) * 32767) / 32768


SEAMLESS_PIPELINES = [
    "highpass=freq=30:order=4,gain=db=3,lowpass=freq=5000:order=2",
    "highpass=freq=80,normalize=peak_db=-1",
    "normalize,highpass=freq=20:order=8,normalize=peak_db=-3,lowpass=freq=1000",
]


@pytest.mark.parametrize("spec", SEAMLESS_PIPELINES)
@pytest.mark.parametrize(("chunk_seconds", "workers"), [(0.25, 1), (0.25, 3), (1.7, 2), (30.0, 4)])
def test_chunked_output_equals_whole_file_processing(
    make_engine, recorder, source, spec, chunk_seconds, workers
):
    path = source(music(4.1, rate=RATE))
    result, chunks = run_task(
        make_engine(workers=workers), recorder, path, spec, chunk_seconds=chunk_seconds
    )
    expected = reference(path, spec)
    assert result.shape == expected.shape
    assert np.max(np.abs(result - expected)) <= 1e-4
    assert len(chunks) == int(np.ceil(4.1 / chunk_seconds))


def test_output_equals_scipy_on_the_whole_signal(make_engine, recorder, source):
    x = noise(3.0, rate=RATE, amplitude=0.1)
    path = source(x)
    result, _ = run_task(
        make_engine(), recorder, path, "highpass=freq=50:order=6", chunk_seconds=0.25
    )
    sos = signal.butter(6, 50, btype="highpass", fs=RATE, output="sos")
    expected = signal.sosfilt(sos, read_wav(path)[0], axis=0)
    assert np.max(np.abs(result - expected)) <= 1e-4


def test_output_is_bit_identical_across_worker_counts(make_engine, recorder, source):
    path = source(music(3.0, rate=RATE))
    spec = "highpass=freq=40:order=4,normalize,lowpass=freq=3000"
    results = [
        run_task(make_engine(workers=workers), recorder, path, spec, chunk_seconds=0.25)[0]
        for workers in (1, 2, 4)
    ]
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_chunks_are_emitted_in_order_each_once(make_engine, recorder, source, test_steps):
    path = source(music(5.0, rate=RATE))
    result, chunks = run_task(
        make_engine(workers=4), recorder, path, "test_jitter,gain=db=-1", chunk_seconds=0.25
    )
    assert [chunk["index"] for chunk in chunks] == list(range(20))
    audio = np.concatenate([pcm16(chunk["audio"], 2) for chunk in chunks]) / 32768
    assert np.array_equal(audio, result)
    starts = [chunk["start"] for chunk in chunks]
    assert starts == pytest.approx([i * 0.25 for i in range(20)])
    assert all(chunk["chunks_total"] == 20 for chunk in chunks)


def test_a_failing_step_fails_only_its_task(make_engine, recorder, source, test_steps):
    engine = make_engine(workers=2)
    sid = recorder.connect("client")
    path = source(music(4.0, rate=RATE))
    failing = submit(engine, path, f"test_explode=at={RATE * 2}", sid=sid, chunk_seconds=0.5)
    healthy = submit(engine, path, "gain=db=-2", sid=sid, chunk_seconds=0.5)
    event, data = recorder.wait_end(sid, failing.id)
    assert event == "processing_error"
    assert data["error"] == "processing_failed" and "boom on purpose" in data["message"]
    assert recorder.wait_end(sid, healthy.id)[0] == "processing_complete"
    assert engine.describe(failing)["status"] == "failed"
    assert engine.describe(failing)["error"]["error"] == "processing_failed"
    # The pool still works for the next task.
    later = submit(engine, path, "gain", sid=sid)
    assert recorder.wait_end(sid, later.id)[0] == "processing_complete"
    # Nothing after the terminal event.
    assert recorder.events(sid, failing.id)[-1] == "processing_error"


def test_stop_drops_the_queued_chunks_of_the_task(make_engine, recorder, source, test_steps):
    engine = make_engine(workers=2, chunk_window=8)
    sid = recorder.connect("client")
    task = submit(engine, source(music(8.0, rate=RATE)), "test_count", sid=sid, chunk_seconds=0.25)
    Count.wait_for(2)  # both workers are busy in the step; 6 more chunks wait in the pool
    engine.stop(task.id)
    Count.gate.set()
    task.jobs.wait_idle()
    assert Count.processed == 2
    assert recorder.events(sid, task.id) == ["processing_stopped"]


def test_work_finished_after_a_stop_is_dropped_at_the_worker(
    make_engine, recorder, source, test_steps
):
    engine = make_engine(workers=2, chunk_window=8)
    sid = recorder.connect("client")
    task = submit(engine, source(music(8.0, rate=RATE)), "test_count", sid=sid, chunk_seconds=0.25)
    Count.wait_for(2)  # two chunks are inside the step when the stop comes
    engine.stop(task.id)
    Count.gate.set()  # ...and finish after it
    task.jobs.wait_idle()
    assert Count.processed == 2
    # Neither was analysed, encoded, stored or emitted (the stop's own event aside).
    encoded = [event for event, data in recorder.prepared if data["task_id"] == task.id]
    assert encoded == ["processing_stopped"]
    assert len(task.store) == 0 and task.measures == []
    assert recorder.events(sid, task.id) == ["processing_stopped"]


TERMINAL_CORE = {"task_id", "status", "chunks_emitted", "duration", "elapsed", "summary",
                 "result_url", "warnings"}  # fmt: skip


def test_every_terminal_event_carries_the_same_core(make_engine, recorder, source, test_steps):
    engine = make_engine(workers=2)
    sid = recorder.connect("client")
    path = source(music(4.0, rate=RATE))
    completed = submit(engine, path, "gain=db=-3", sid=sid, chunk_seconds=0.5)
    failed = submit(engine, path, f"test_explode=at={RATE * 2}", sid=sid, chunk_seconds=0.5)
    event, done = recorder.wait_end(sid, completed.id)
    assert event == "processing_complete" and done.keys() >= TERMINAL_CORE
    assert done["status"] == "completed" and done["chunks_emitted"] == done["chunks"] == 8
    assert done["duration"] == pytest.approx(4.0) and done["elapsed"] > 0
    assert done["summary"]["integrated_lufs"] is not None
    assert done["result_url"] == f"/tasks/{completed.id}/result" and done["warnings"] == []
    event, error = recorder.wait_end(sid, failed.id)
    assert event == "processing_error" and error.keys() >= TERMINAL_CORE
    assert error["status"] == "failed" and error["error"] == "processing_failed"
    assert error["summary"] is None and error["result_url"] is None
    assert error["duration"] == error["chunks_emitted"] * 0.5

    Count.gate.clear()
    stopping = submit(engine, path, "test_count", sid=sid, chunk_seconds=0.5)
    Count.wait_for(1)
    engine.stop(stopping.id)
    Count.gate.set()
    event, stopped = recorder.wait_end(sid, stopping.id)
    assert event == "processing_stopped" and stopped.keys() >= TERMINAL_CORE
    assert stopped["status"] == "stopped" and stopped["reason"] == "requested"
    assert stopped["chunks_emitted"] == 0 and stopped["duration"] == 0.0
    assert stopped["summary"] is None and stopped["result_url"] == f"/tasks/{stopping.id}/result"
    # The task JSON and the event agree.
    assert engine.describe(completed)["summary"] == done["summary"]


def test_a_deleted_task_ends_without_a_result_url(make_engine, recorder, source, test_steps):
    engine = make_engine(workers=2)
    sid = recorder.connect("client")
    task = submit(engine, source(music(4.0, rate=RATE)), "test_count", sid=sid, chunk_seconds=0.5)
    Count.wait_for(1)
    engine.delete(task.id)
    Count.gate.set()
    event, data = recorder.wait_end(sid, task.id)
    assert (event, data["reason"], data["result_url"]) == ("processing_stopped", "deleted", None)


def test_replay_meets_the_live_stream_with_no_gap_and_no_duplicate(
    make_engine, recorder, source, test_steps
):
    engine = make_engine(workers=3)
    owner = recorder.connect("owner")
    task = submit(
        engine, source(music(6.0, rate=RATE)), "test_jitter", sid=owner, chunk_seconds=0.25
    )
    late = []
    for number in range(12):
        recorder.wait_chunks(owner, task.id, number * 2)
        sid = recorder.connect(f"late-{number}")
        from_index = random.Random(number).randint(0, number * 2)
        engine.subscribe(task.id, sid, from_index=from_index)
        late.append((sid, from_index))
    recorder.wait_end(owner, task.id)
    for sid, from_index in late:
        assert recorder.wait_end(sid, task.id)[0] == "processing_complete"
        indexes = [chunk["index"] for chunk in recorder.chunks(sid, task.id)]
        assert indexes == list(range(from_index, 24)), sid
        assert recorder.events(sid, task.id)[-1] == "processing_complete"


def test_subscribing_to_a_finished_task_replays_it_then_ends(make_engine, recorder, source):
    engine = make_engine()
    owner = recorder.connect("owner")
    task = submit(engine, source(music(2.0, rate=RATE)), "gain", sid=owner, chunk_seconds=0.5)
    recorder.wait_end(owner, task.id)
    again = recorder.connect("again")
    engine.subscribe(task.id, again, from_index=1)
    assert recorder.wait_end(again, task.id)[0] == "processing_complete"
    live = recorder.chunks(owner, task.id)
    replayed = recorder.chunks(again, task.id)
    assert [c["index"] for c in replayed] == [1, 2, 3]
    assert [c["audio"] for c in replayed] == [c["audio"] for c in live[1:]]
    with pytest.raises(Exception, match="beyond the 4 chunks"):
        engine.subscribe(task.id, again, from_index=5)


def test_events_go_to_the_task_subscribers_only(make_engine, recorder, source):
    engine = make_engine()
    alice, bob = recorder.connect("alice"), recorder.connect("bob")
    recorder.connect("eve")
    path = source(music(1.0, rate=RATE))
    task_a = submit(engine, path, "gain", sid=alice, chunk_seconds=0.25)
    task_b = submit(engine, path, "gain", sid=bob, chunk_seconds=0.25)
    recorder.wait_end(alice, task_a.id)
    recorder.wait_end(bob, task_b.id)
    assert {data["task_id"] for _, data in recorder.received["alice"]} == {task_a.id}
    assert {data["task_id"] for _, data in recorder.received["bob"]} == {task_b.id}
    assert recorder.received["eve"] == []


def test_waiting_tasks_start_when_a_slot_frees(make_engine, recorder, source, test_steps):
    engine = make_engine(workers=1, max_active=1, max_queued=1)
    sid = recorder.connect("client")
    path = source(music(2.0, rate=RATE))
    first = submit(engine, path, "test_count", sid=sid, chunk_seconds=0.5)
    second = submit(engine, path, "gain", sid=sid)
    assert engine.describe(second)["status"] == "queued"
    assert engine.health() == {"status": "ok", "workers": 1, "active_tasks": 1, "queued_tasks": 1}
    with pytest.raises(AtCapacity):
        submit(engine, path, "gain", sid=sid)
    engine.stop(first.id)
    # The waiting task started at once, while the stopped one's chunk still holds the worker.
    assert engine.describe(second)["status"] == "processing"
    Count.gate.set()
    assert recorder.wait_end(sid, second.id)[0] == "processing_complete"
    folders = {p.name for p in engine.data_dir.iterdir()}
    assert folders == {first.id, second.id}  # the refused upload left nothing behind


def test_stop_is_idempotent_and_finished_tasks_conflict(make_engine, recorder, source):
    engine = make_engine()
    sid = recorder.connect("client")
    path = source(music(1.0, rate=RATE))
    done = submit(engine, path, "gain", sid=sid)
    recorder.wait_end(sid, done.id)
    with pytest.raises(TaskConflict) as caught:
        engine.stop(done.id)
    assert caught.value.extra["status"] == "completed"
    with pytest.raises(TaskNotFound):
        engine.stop("0" * 32)


def test_stopped_result_holds_the_emitted_chunks(make_engine, recorder, source, test_steps):
    engine = make_engine(workers=1)
    sid = recorder.connect("client")
    task = submit(engine, source(music(4.0, rate=RATE)), "test_jitter", sid=sid, chunk_seconds=0.5)
    recorder.wait_chunks(sid, task.id, 2)
    engine.stop(task.id)
    engine.stop(task.id)  # again: fine
    event, data = recorder.wait_end(sid, task.id)
    assert event == "processing_stopped" and data["reason"] == "requested"
    chunks = recorder.chunks(sid, task.id)
    assert data["chunks_emitted"] == len(chunks) >= 2
    result, _ = read_wav(task.store.path)
    audio = np.concatenate([pcm16(c["audio"], 2) for c in chunks]) / 32768
    assert np.array_equal(result, audio)
    described = engine.describe(task)
    assert described["duration"] == pytest.approx(4.0)  # the input's, whatever was emitted
    assert described["chunks_total"] == 8
    summary = described["summary"]  # of what was emitted before the stop
    assert summary["duration"] == pytest.approx(0.5 * len(chunks))
    assert summary["sample_peak_db"] == pytest.approx(20 * np.log10(np.abs(audio).max()), abs=0.01)


def test_delete_removes_the_task_and_its_files(make_engine, recorder, source, test_steps):
    engine = make_engine(workers=1)
    sid = recorder.connect("client")
    running = submit(engine, source(music(4.0, rate=RATE)), "test_count", sid=sid)
    engine.delete(running.id)
    assert recorder.wait_end(sid, running.id)[1]["reason"] == "deleted"
    Count.gate.set()
    running.jobs.wait_idle()
    with pytest.raises(TaskNotFound):
        engine.get(running.id)
    finished = submit(engine, source(music(1.0, rate=RATE)), "gain", sid=sid)
    recorder.wait_end(sid, finished.id)
    engine.delete(finished.id)
    for task in (running, finished):
        assert task.retired.wait(30)  # if its runner was still exiting, the runner removes it
        assert not task.folder.exists()


def test_bad_uploads_cost_nothing(make_engine, recorder, tmp_path, source):
    engine = make_engine()
    bad = tmp_path / "bad.mp3"
    bad.write_text("not audio")
    with pytest.raises(DecodeError):
        submit(engine, bad, "gain")
    with pytest.raises(ParameterError, match=r"0\.49 x the sample rate"):
        submit(engine, source(music(0.5, rate=8000), rate=8000), "lowpass=freq=5000")
    assert list(engine.data_dir.iterdir()) == []
    assert engine.health()["active_tasks"] == 0


def test_task_json_reports_progress_and_the_summary(make_engine, recorder, source):
    engine = make_engine()
    sid = recorder.connect("client")
    task = submit(engine, source(music(2.0, rate=RATE) * 0.5), "normalize=peak_db=-3", sid=sid)
    recorder.wait_end(sid, task.id)
    described = engine.describe(task)
    assert described["status"] == "completed" and described["progress"] == 1.0
    assert described["chunks_done"] == described["chunks_total"] == 1
    assert described["summary"]["sample_peak_db"] == pytest.approx(-3.0, abs=0.01)
    assert described["summary"]["duration"] == pytest.approx(2.0)
    assert described["pipeline"] == [{"step": "normalize", "peak_db": -3.0}]


def ebu_3341(case: int, rate: int = 48000) -> np.ndarray:
    """EBU Tech 3341 test signals 1 to 5: stereo 1 kHz sines, (dBFS, seconds) segments."""
    segments = {
        1: [(-23, 20)],
        2: [(-33, 20)],
        3: [(-36, 10), (-23, 60), (-36, 10)],
        4: [(-72, 10), (-36, 10), (-23, 60), (-36, 10), (-72, 10)],
        5: [(-26, 20), (-23 + 3, 20.1), (-26, 20)],
    }[case]
    parts, start = [], 0.0
    for level, seconds in segments:
        t = start + np.arange(round(seconds * rate)) / rate
        parts.append(10 ** (level / 20) * np.sin(2 * np.pi * 1000 * t))
        start += seconds
    mono = np.concatenate(parts)
    return np.stack([mono, mono], axis=1)


@pytest.mark.parametrize("case", [1, 2, 3, 4, 5])
def test_ebu_3341_cases_reach_the_loudness_target(make_engine, recorder, source, case):
    import pyloudnorm

    x = ebu_3341(case)
    sid = recorder.connect("client")
    task = submit(make_engine(), source(x, 48000), "loudness=target=-16", sid=sid,
                  chunk_seconds=1.3)  # fmt: skip
    event, end = recorder.wait_end(sid, task.id)
    assert event == "processing_complete"
    (report,) = end["summary"]["steps"]
    assert report["measured_lufs"] == pytest.approx(-33.0 if case == 2 else -23.0, abs=0.1)
    assert report["limited_by_peak"] is False
    assert end["summary"]["integrated_lufs"] == pytest.approx(-16.0, abs=0.1)
    result, rate = read_wav(task.store.path)
    assert pyloudnorm.Meter(rate).integrated_loudness(result) == pytest.approx(-16.0, abs=0.1)
