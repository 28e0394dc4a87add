"""Each step against an independent whole-signal reference (numpy/scipy), and its contract."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import music, noise, sine
from scipy import signal

from audioserver.audio.pipeline import Pipeline
from audioserver.audio.steps import Block, GlobalStep, Step
from audioserver.audio.steps.filters import SETTLE_TOLERANCE, settle_frames

RATE = 48000


def run_whole(spec: str, x: np.ndarray, rate: int = RATE) -> np.ndarray:
    return Pipeline.parse(spec)(x, rate)[0]


def level_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x))))


@pytest.mark.parametrize("db", [-60.0, -6.0, 0.0, 3.5, 40.0])
def test_gain_multiplies_by_the_level(db):
    x = noise(0.5, rate=RATE)
    np.testing.assert_allclose(run_whole(f"gain=db={db}", x), x * 10 ** (db / 20), rtol=1e-12)


@pytest.mark.parametrize("peak_db", [-1.0, -6.0, 0.0, -60.0])
def test_normalize_brings_the_sample_peak_to_the_target(peak_db):
    x = music(2.0, rate=RATE) * 0.1
    y = run_whole(f"normalize=peak_db={peak_db}", x)
    assert np.max(np.abs(y)) == pytest.approx(10 ** (peak_db / 20), rel=1e-12)
    np.testing.assert_allclose(y / np.max(np.abs(y)), x / np.max(np.abs(x)), atol=1e-12)


def test_normalize_leaves_silence_silent():
    y = run_whole("normalize", np.zeros((1000, 2)))
    assert not np.any(y)


@pytest.mark.parametrize(
    ("name", "freq", "order"),
    [("highpass", 80, 2), ("highpass", 20, 8), ("lowpass", 5000, 4), ("lowpass", 200, 1)],
)
def test_filters_equal_scipy_butterworth(name, freq, order):
    x = music(1.0, rate=RATE)
    sos = signal.butter(order, freq, btype=name, fs=RATE, output="sos")
    expected = signal.sosfilt(sos, x, axis=0)
    np.testing.assert_allclose(
        run_whole(f"{name}=freq={freq}:order={order}", x), expected, atol=1e-12
    )


def test_highpass_removes_rumble_and_keeps_the_voice_band():
    low, mid = sine(2.0, rate=RATE, freq=20), sine(2.0, rate=RATE, freq=1000)
    spec = "highpass=freq=80:order=4"
    settled = slice(RATE // 2, None)  # after the filter's start-up
    assert level_db(run_whole(spec, low)[settled]) - level_db(low) < -40
    assert abs(level_db(run_whole(spec, mid)[settled]) - level_db(mid)) < 0.1


def test_lowpass_removes_hiss_above_the_cutoff():
    high = sine(1.0, rate=RATE, freq=15000)
    assert (
        level_db(run_whole("lowpass=freq=1000:order=4", high)[RATE // 4 :]) - level_db(high) < -60
    )


@pytest.mark.parametrize(("freq", "order"), [(10, 8), (80, 2), (1000, 4)])
def test_settle_frames_bounds_the_rest_of_the_impulse_response(freq, order):
    sos = signal.butter(order, freq, btype="highpass", fs=RATE, output="sos")
    frames = settle_frames(sos)
    impulse = np.zeros(frames * 4 + 1000)
    impulse[0] = 1
    response = np.abs(signal.sosfilt(sos, impulse))
    assert response[frames:].sum() < SETTLE_TOLERANCE
    assert response[frames // 2 :].sum() >= SETTLE_TOLERANCE  # not wastefully long


def chunk_output(stage, x: np.ndarray, start: int, stop: int, pre_roll: int) -> np.ndarray:
    """Run one chunk [start, stop) of x through a stage with the given pre-roll."""
    first = max(0, start - pre_roll)
    block = Block(x[first:stop], RATE, first, start - first)
    return stage.run(block).samples


@pytest.mark.parametrize(
    "spec",
    [
        "highpass=freq=20:order=6",
        "lowpass=freq=300:order=3",
        "highpass=freq=40,lowpass=freq=2000,gain=db=-3",
    ],
)
def test_a_chunk_with_its_pre_roll_equals_the_same_part_of_the_whole(spec):
    x = music(3.0, rate=RATE)
    whole = run_whole(spec, x)
    stage = Pipeline.parse(spec).plan(RATE, 2)[0]
    start, stop = RATE + 123, 2 * RATE
    chunked = chunk_output(stage, x, start, stop, stage.pre_roll)
    np.testing.assert_allclose(chunked, whole[start:stop], atol=1e-6)
    # Without the pre-roll the seam would show: the test above would catch a zero pre-roll.
    assert np.max(np.abs(chunk_output(stage, x, start, stop, 0) - whole[start:stop])) > 1e-3


def test_steps_give_identical_output_when_run_from_many_threads():
    x = music(4.0, rate=RATE)
    stage = Pipeline.parse("highpass=freq=30:order=4,gain=db=2,lowpass=freq=8000").plan(RATE, 2)[0]
    bounds = [(start, start + 4000) for start in range(0, len(x) - 4000, 4000)]
    serial = [chunk_output(stage, x, a, b, stage.pre_roll) for a, b in bounds]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda ab: chunk_output(stage, x, *ab, stage.pre_roll), bounds))
    for one, other in zip(serial, parallel, strict=True):
        assert np.array_equal(one, other)


def test_every_step_is_described_for_the_catalogue():
    assert {"gain", "normalize", "highpass", "lowpass"} <= set(Step.registry)
    for name, step in Step.registry.items():
        entry = step.catalogue()
        assert entry["name"] == name and entry["description"]
        assert entry["kind"] in ("per sample", "stateful", "global", "position-dependent")
        assert (entry["kind"] == "global") == issubclass(step, GlobalStep)
        for param in entry["parameters"]:
            assert param["min"] <= param["max"]
            assert param["default"] is None or param["min"] <= param["default"] <= param["max"]
        Pipeline.parse(entry["example"])  # every example parses
