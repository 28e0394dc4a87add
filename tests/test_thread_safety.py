"""Many tasks through one engine's pool at once give what each gives alone (as pedalboard's test).

Twelve tasks, of different signals, rates, channel counts, input codecs,
output formats and pipelines (stateful steps: filters, a compressor, a
resampler, fades; global steps: loudness, normalize), run together on a pool
of several workers; then each runs alone on a pool of one worker. Each task's
result file and every chunk it emitted must be byte for byte the same both
ways: no step, decoder, encoder or per-task state may be shared between
tasks or depend on which worker ran a chunk, or when.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import Count, Recorder, encode, music, noise, sine, write_wav

from audioserver.audio.pipeline import Pipeline
from audioserver.tasks import TaskEngine, TaskOptions

# Chunk fields that say where and how fast a chunk was processed, not what it holds.
RUN_FIELDS = frozenset({"processing_ms", "worker"})


@dataclass(frozen=True)
class Case:
    """One task of the mix: its input and what is asked of it."""

    make: Callable[[], np.ndarray]
    rate: int
    pipeline: str
    chunk_seconds: float
    input_format: str = "wav"
    output_format: str = "wav"


CASES = [
    Case(lambda: music(3.0, rate=44100), 44100, "highpass=freq=80,gain=db=-3", 0.25),
    Case(lambda: noise(2.5, rate=48000, channels=1, amplitude=0.2), 48000,
         "compressor=threshold_db=-30:ratio=6:release_ms=300,gain=db=2", 0.5),
    Case(lambda: music(3.0, rate=44100), 44100,
         "resample=rate=48000,highpass=freq=40:order=4", 0.5, output_format="flac"),
    Case(lambda: music(3.0, rate=22050, seed=3), 22050, "loudness=target=-16", 0.25),
    Case(lambda: music(3.0, rate=48000, seed=4), 48000,
         "highpass=freq=30,loudness=target=-20,fade_out=seconds=1.5", 0.5),
    Case(lambda: sine(2.0, rate=16000, channels=1, freq=330), 16000,
         "fade_in=seconds=0.5,fade_out=seconds=1", 0.25),
    Case(lambda: music(2.0, rate=44100, channels=6, seed=5), 44100,
         "normalize,lowpass=freq=3000", 0.5, input_format="flac"),
    Case(lambda: music(3.0, rate=48000, seed=6), 48000,
         "resample=rate=22050,compressor,loudness", 0.5),
    Case(lambda: noise(2.0, rate=96000, channels=1, amplitude=0.1, seed=7), 96000,
         "bandpass=low=200:high=4000:order=4", 0.25),
    Case(lambda: music(3.0, rate=44100, seed=8), 44100,
         "mono,highpass=freq=100,compressor=release_ms=300", 0.25, input_format="mp3"),
    Case(lambda: music(2.0, rate=32000, channels=4, seed=9), 32000,
         "lowpass=freq=8000:order=8,normalize=peak_db=-3,fade_out", 0.5, output_format="mp3"),
    Case(lambda: sine(2.0, rate=8000, freq=200, amplitude=0.3), 8000,
         "gain=db=6,compressor=threshold_db=-12,resample=rate=44100", 0.5),
]  # fmt: skip


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_engine(tmp_path: Path, ffmpeg: str, recorder: Recorder) -> Iterator[Callable[..., Any]]:
    engines = []

    def make(**settings: Any) -> TaskEngine:
        engine = TaskEngine(
            data_dir=tmp_path / f"data{len(engines)}",
            ffmpeg=ffmpeg,
            publisher=recorder,
            stall_seconds=10.0,
            max_queued=len(CASES),
            **settings,
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    """Each case's input file, written once."""
    paths = []
    for number, case in enumerate(CASES):
        path = tmp_path / f"input-{number}.{case.input_format}"
        samples = case.make()
        if case.input_format == "wav":
            write_wav(path, samples, case.rate)
        else:
            encode(samples, case.rate, path)
        paths.append(path)
    return paths


def start(
    engine: TaskEngine, recorder: Recorder, case: Case, path: Path, *, before: str = ""
) -> tuple[str, Any]:
    """Submit a copy of a case's input (the engine takes the file); return the sid and task.

    ``before``: steps put in front of the case's pipeline (test steps that leave
    the audio as it is).
    """
    sid = recorder.connect(f"client-{time.monotonic_ns()}")
    upload = path.with_name(f"upload-{time.monotonic_ns()}")
    upload.write_bytes(path.read_bytes())
    options = TaskOptions(
        pipeline=Pipeline.parse(before + case.pipeline),
        chunk_seconds=case.chunk_seconds,
        format=case.output_format,
    )
    return sid, engine.create(upload, filename=path.name, options=options, subscriber=sid)


def outcome(engine: TaskEngine, recorder: Recorder, sid: str, task: Any) -> dict[str, Any]:
    """Wait for a task's end; return its result's bytes, its chunks and its summary."""
    event, data = recorder.wait_end(sid, task.id)
    assert event == "processing_complete", data
    chunks = [
        {key: value for key, value in chunk.items() if key not in RUN_FIELDS | {"task_id"}}
        for chunk in recorder.chunks(sid, task.id)
    ]
    return {
        "result": engine.result(task).read_bytes(),
        "chunks": chunks,
        "summary": data["summary"],
    }


def test_tasks_in_parallel_give_what_each_gives_alone(make_engine, recorder, inputs, test_steps):
    workers = 4
    engine = make_engine(workers=workers, max_active=len(CASES), chunk_window=3)
    # test_count holds the workers until every task is running; test_jitter then makes
    # the chunks of all twelve finish out of order. Neither changes the audio.
    running = [
        start(engine, recorder, case, path, before="test_count,test_jitter,")
        for case, path in zip(CASES, inputs, strict=True)
    ]
    Count.wait_for(workers)
    assert engine.health()["active_tasks"] == len(CASES)
    Count.gate.set()
    together = [outcome(engine, recorder, sid, task) for sid, task in running]

    alone_engine = make_engine(workers=1, max_active=1)
    alone = []
    for case, path in zip(CASES, inputs, strict=True):
        sid, task = start(alone_engine, recorder, case, path)
        alone.append(outcome(alone_engine, recorder, sid, task))

    for case, parallel, single in zip(CASES, together, alone, strict=True):
        assert len(parallel["chunks"]) == len(single["chunks"]) > 1, case.pipeline
        assert parallel["chunks"] == single["chunks"], case.pipeline
        assert parallel["result"] == single["result"], case.pipeline
        assert parallel["summary"] == single["summary"], case.pipeline
