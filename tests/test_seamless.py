"""Chunking is invisible: random pipelines through the real engine equal whole-file processing.

For random pipelines of up to 5 steps, chunk sizes from 0.25 s to 30 s and
1 to 4 workers, the task's output equals the whole file processed in one
piece within 1e-4 per sample, and is bit-identical across worker counts.
"""

from __future__ import annotations

import itertools
import shutil
import time

import numpy as np
import pytest
from helpers import Recorder, music, read_wav, write_wav
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audioserver.audio.ffmpeg import find_ffmpeg
from audioserver.audio.pipeline import Pipeline
from audioserver.tasks import TaskEngine, TaskOptions

RATES = (8000, 16000, 22050, 32000, 44100, 48000)
SECONDS = 3.5


@st.composite
def step_at(draw, rate: int) -> tuple[str, int]:
    """Draw one step valid at this sample rate; return its text and the rate after it."""
    name = draw(
        st.sampled_from(
            ["gain", "normalize", "loudness", "highpass", "lowpass", "bandpass", "fade_in",
             "fade_out", "resample", "mono", "compressor"]
        )
    )  # fmt: skip
    top = 0.45 * rate
    number = st.floats
    if name == "gain":
        return f"gain=db={draw(number(-20, 6)):.3f}", rate
    if name == "normalize":
        return f"normalize=peak_db={draw(number(-12, 0)):.3f}", rate
    if name == "loudness":
        return f"loudness=target={draw(number(-30, -10)):.2f}", rate
    if name in ("highpass", "lowpass"):
        freq, order = draw(number(20, top)), draw(st.integers(1, 8))
        return f"{name}=freq={freq:.2f}:order={order}", rate
    if name == "bandpass":
        low = draw(number(20, top / 2))
        high = draw(number(low * 1.5, top))
        return f"bandpass=low={low:.2f}:high={high:.2f}:order={draw(st.integers(1, 4))}", rate
    if name in ("fade_in", "fade_out"):
        return f"{name}=seconds={draw(number(0, 3)):.3f}", rate
    if name == "resample":
        new_rate = draw(st.sampled_from(RATES))
        return f"resample=rate={new_rate}", new_rate
    if name == "mono":
        return "mono", rate
    threshold, ratio = draw(number(-40, -5)), draw(number(1, 10))
    attack, release = draw(number(0.1, 50)), draw(number(5, 2000))
    return (
        f"compressor=threshold_db={threshold:.2f}:ratio={ratio:.2f}:attack_ms={attack:.2f}"
        f":release_ms={release:.1f}:makeup_db={draw(number(0, 6)):.2f}",
        rate,
    )


@st.composite
def pipelines(draw, rate: int) -> str:
    steps = []
    for _ in range(draw(st.integers(1, 5))):
        text, rate = draw(step_at(rate))
        steps.append(text)
    return ",".join(steps)


class Runner:
    """Engines with 1 to 4 workers sharing one recorder; runs tasks to their end."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.recorder = Recorder()
        self.sid = self.recorder.connect("client")
        self.engines = {
            workers: TaskEngine(
                data_dir=folder / f"data-{workers}", ffmpeg=find_ffmpeg(), workers=workers
            )
            for workers in range(1, 5)
        }
        for engine in self.engines.values():
            engine.publisher = self.recorder
        self.names = itertools.count()

    def run(self, source, spec: str, *, chunk_seconds: float, workers: int) -> np.ndarray:
        upload = self.folder / f"upload-{next(self.names)}"
        shutil.copy(source, upload)
        options = TaskOptions(pipeline=Pipeline.parse(spec), chunk_seconds=chunk_seconds)
        task = self.engines[workers].create(
            upload, filename="x.wav", options=options, subscriber=self.sid
        )
        event, data = self.recorder.wait_end(self.sid, task.id)
        assert event == "processing_complete", data
        assert task.retired.wait(30)
        result, _ = read_wav(task.result_path)
        self.engines[workers].delete(task.id)
        return result

    def close(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("seamless"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    return {
        rate: write_wav(folder / f"{rate}.wav", music(SECONDS, rate=rate, seed=rate), rate)
        for rate in (8000, 22050, 44100)
    }


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_pipelines_are_seamless_and_worker_independent(runner, sources, data):
    rate = data.draw(st.sampled_from(sorted(sources)), label="rate")
    spec = data.draw(pipelines(rate), label="pipeline")
    chunk_seconds = data.draw(
        st.one_of(st.sampled_from([0.25, 0.5, 1.0, 30.0]), st.floats(0.25, 30)), label="chunk"
    )
    workers = data.draw(st.permutations([1, 2, 3, 4]), label="workers")[:2]
    x, _ = read_wav(sources[rate])
    expected, _ = Pipeline.parse(spec)(x, rate)
    expected = np.rint(np.clip(expected, -1, 1) * 32767) / 32768
    first = runner.run(sources[rate], spec, chunk_seconds=chunk_seconds, workers=workers[0])
    second = runner.run(sources[rate], spec, chunk_seconds=chunk_seconds, workers=workers[1])
    assert first.shape == expected.shape
    assert np.max(np.abs(first - expected), initial=0.0) <= 1e-4
    assert np.array_equal(first, second)


def test_the_runner_would_notice_a_seam(runner, sources):
    """The comparison above is sharp: without pre-roll a filter's seams exceed 1e-4."""
    x, rate = read_wav(sources[44100])
    started = time.monotonic()
    result = runner.run(sources[44100], "highpass=freq=20:order=8", chunk_seconds=0.25, workers=2)
    expected, _ = Pipeline.parse("highpass=freq=20:order=8")(x, rate)
    assert np.max(np.abs(result - np.rint(expected * 32767) / 32768)) <= 1e-4
    # The same filter restarted at every chunk boundary (what no pre-roll would give):
    chunk = int(0.25 * rate)
    restarted = np.concatenate(
        [Pipeline.parse("highpass=freq=20:order=8")(x[i : i + chunk], rate)[0]
         for i in range(0, len(x), chunk)]
    )  # fmt: skip
    assert np.max(np.abs(restarted - expected)) > 1e-3
    assert time.monotonic() - started < 60
