"""processing_progress at engine level: its order among the task's events, and its rate.

A recorder with a clock stands for the Socket.IO clients: it notes when the
engine emitted each event, so the rate is the engine's own, free of network
timing. A test step that takes a known time per chunk makes a task last long
enough for the throttle to matter.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TERMINAL_EVENTS, Recorder, music, write_wav

from audioserver.audio.pipeline import Pipeline
from audioserver.audio.steps import Block, Step
from audioserver.tasks import PROGRESS_SECONDS, TaskEngine, TaskOptions

RATE = 44100


class Slow(Step):
    """A test step that takes 15 ms a chunk (a worker sleeps, so two overlap)."""

    name = "test_slow"
    description = "sleeps 15 ms a chunk"

    def process(self, block: Block) -> Block:
        time.sleep(0.015)
        return block


Step.registry.pop(Slow.name)  # registered only while a test of this file runs


class ClockedRecorder(Recorder):
    """A recorder that also notes the moment of every event it is given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.timeline: list[tuple[float, str, dict[str, Any]]] = []

    def emit(self, event: str, data: dict[str, Any], *, to: str) -> None:
        with self._condition:
            self.timeline.append((time.monotonic(), event, data))
        super().emit(event, data, to=to)

    def wait_until(self, condition: Callable[[], bool], *, timeout: float = 30.0) -> None:
        with self._condition:
            assert self._condition.wait_for(condition, timeout=timeout)


@pytest.fixture
def recorder() -> ClockedRecorder:
    return ClockedRecorder()


@pytest.fixture
def engine(tmp_path, ffmpeg, recorder) -> Iterator[TaskEngine]:
    Step.registry[Slow.name] = Slow
    engine = TaskEngine(data_dir=tmp_path / "data", ffmpeg=ffmpeg, workers=2, publisher=recorder)
    yield engine
    engine.shutdown()
    Step.registry.pop(Slow.name, None)


_names = itertools.count()


def run(engine: TaskEngine, recorder: Recorder, folder: Path, spec: str, seconds: float):
    """Run a task on music() to its end; return its id and the events its subscriber got."""
    path = write_wav(folder / f"source-{next(_names)}.wav", music(seconds, rate=RATE), RATE)
    upload = folder / f"upload-{next(_names)}"
    shutil.copy(path, upload)
    sid = recorder.connect(f"client-{next(_names)}")
    options = TaskOptions(pipeline=Pipeline.parse(spec), chunk_seconds=0.25)
    task = engine.create(upload, filename=path.name, options=options, subscriber=sid)
    event, data = recorder.wait_end(sid, task.id, timeout=120)
    assert event == "processing_complete", data
    return task.id, [(name, data) for name, data in recorder.received[sid]]


def progress_of(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [data for name, data in events if name == "processing_progress"]


def test_the_first_pass_reports_progress_and_every_stage_ends_with_its_count(
    engine, recorder, tmp_path
):
    task_id, events = run(engine, recorder, tmp_path, "test_slow,loudness=target=-16", 20.0)
    names = [name for name, _ in events]
    first_chunk = names.index("audio_chunk")
    before = progress_of(events[:first_chunk])
    # The silent first pass (measuring the loudness) is reported while it runs.
    assert len(before) >= 3 and {p["stage"] for p in before} == {0}
    assert all(p["stages"] == 2 and p["task_id"] == task_id for p in progress_of(events))
    stage_end = before[-1]
    assert stage_end["chunks_done"] == stage_end["chunks_total"] == 80
    assert stage_end["chunks_emitted"] == 0 and stage_end["progress"] == 0.5
    # Nothing after the end; the last progress closes the last stage.
    assert names[-1] == "processing_complete" and names.count("processing_complete") == 1
    progress = progress_of(events)
    last = progress[-1]
    assert last["stage"] == 1 and last["chunks_done"] == last["chunks_total"] == 80
    assert last["chunks_emitted"] == 80 and last["progress"] == 1.0
    assert names.index("processing_complete") > max(
        i for i, name in enumerate(names) if name == "processing_progress"
    )
    # In order: stages never go back; within one, neither do the counts; nor the progress.
    keys = [(p["stage"], p["chunks_done"]) for p in progress]
    assert keys == sorted(keys)
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    assert all(0 < p["progress"] <= 1 for p in progress)
    # During the last stage, chunks_emitted is the audio_chunks sent before the event.
    for position, (name, data) in enumerate(events):
        if name == "processing_progress" and data["stage"] == 1:
            assert data["chunks_emitted"] == names[:position].count("audio_chunk")


def test_at_most_four_a_second_plus_one_when_a_stage_ends(engine, recorder, tmp_path):
    started = time.monotonic()
    task_id, _ = run(engine, recorder, tmp_path, "test_slow,normalize,test_slow", 30.0)
    took = time.monotonic() - started
    timeline = [
        (moment, data)
        for moment, name, data in recorder.timeline
        if name == "processing_progress" and data["task_id"] == task_id
    ]
    assert took > 1.5  # 120 chunks x 2 stages x 15 ms on 2 workers: 1.8 s at least
    stage_ends = [
        (moment, data)
        for (moment, data), following in itertools.zip_longest(timeline, timeline[1:])
        if following is None or following[1]["stage"] > data["stage"]
    ]
    assert [data["stage"] for _, data in stage_ends] == [0, 1]
    assert all(data["chunks_done"] == data["chunks_total"] == 120 for _, data in stage_ends)
    # Between two throttled events, PROGRESS_SECONDS (less the recorder's own delay, a
    # thread switch at most); a stage's end may follow sooner.
    throttled = [entry for entry in timeline if entry not in stage_ends]
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(throttled)]
    assert gaps and min(gaps) >= PROGRESS_SECONDS - 0.05
    assert len(timeline) <= took / PROGRESS_SECONDS + 1 + 2
    # ...and the throttle does not starve it: one at least every second of work.
    assert len(throttled) >= took - 1


def test_no_progress_after_a_stop(engine, recorder, tmp_path):
    path = write_wav(tmp_path / "long.wav", music(30.0, rate=RATE), RATE)
    upload = tmp_path / "upload"
    shutil.copy(path, upload)
    sid = recorder.connect("client")
    options = TaskOptions(pipeline=Pipeline.parse("test_slow,normalize"), chunk_seconds=0.25)
    task = engine.create(upload, filename=path.name, options=options, subscriber=sid)
    recorder.wait_until(lambda: len(progress_of(recorder.received[sid])) >= 2)
    engine.stop(task.id)
    task.retired.wait(30)
    names = recorder.events(sid, task.id)
    assert names[-1] == "processing_stopped" and sum(n in TERMINAL_EVENTS for n in names) == 1
    assert set(names[:-1]) == {"processing_progress"}  # the first pass emits no chunk
