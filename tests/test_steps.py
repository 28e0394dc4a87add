"""Each step against an independent whole-signal reference (numpy/scipy), and its contract."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import helpers
import numpy as np
import pytest
from helpers import music, noise, sine
from scipy import signal

from audioserver.audio.pipeline import Pipeline
from audioserver.audio.steps import GlobalStep, Step
from audioserver.audio.steps.filters import SETTLE_TOLERANCE, settle_frames
from audioserver.audio.steps.resample import lowpass_fir
from audioserver.exceptions import ParameterError

RATE = 48000


def run_whole(spec: str, x: np.ndarray, rate: int = RATE) -> np.ndarray:
    return helpers.run_whole(spec, x, rate)


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


def chunk_output(stage, x, start, stop, pre_roll, post_roll=0, rate=RATE):
    return helpers.chunk_output(stage, x, start, stop, pre_roll, post_roll, rate=rate)


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


@pytest.mark.parametrize(
    "spec",
    [
        "highpass=freq=30:order=4,gain=db=2,lowpass=freq=8000",
        "compressor=threshold_db=-30:release_ms=200,gain=db=3",
        "fade_in=seconds=2,resample=rate=32000,mono",
    ],
)
def test_steps_give_identical_output_when_run_from_many_threads(spec):
    x = music(4.0, rate=RATE)
    stage = Pipeline.parse(spec).plan(RATE, 2)[0]
    size = stage.chunk_frames(0.1)
    bounds = [(start, start + size) for start in range(0, len(x) - size, size)]
    margins = stage.pre_roll, stage.post_roll
    serial = [chunk_output(stage, x, a, b, *margins) for a, b in bounds]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda ab: chunk_output(stage, x, *ab, *margins), bounds))
    for one, other in zip(serial, parallel, strict=True):
        assert np.array_equal(one, other)


def test_every_step_is_described_for_the_catalogue():
    assert set(Step.registry) >= {"gain", "normalize", "loudness", "highpass", "lowpass",
                                  "bandpass", "fade_in", "fade_out", "resample", "mono",
                                  "compressor"}  # fmt: skip
    for name, step in Step.registry.items():
        entry = step.catalogue()
        assert entry["name"] == name and entry["description"]
        assert entry["kind"] in ("per sample", "stateful", "global", "position-dependent")
        if entry["kind"] == "global":
            assert issubclass(step, GlobalStep)
        for param in entry["parameters"]:
            assert param["min"] <= param["max"]
            assert param["default"] is None or param["min"] <= param["default"] <= param["max"]
        Pipeline.parse(entry["example"])  # every example parses


def test_mono_averages_the_channels():
    x = noise(0.2, rate=RATE, channels=3)
    y = run_whole("mono", x)
    assert y.shape == (len(x), 1)
    np.testing.assert_allclose(y[:, 0], x.mean(axis=1), atol=1e-15)


def test_bandpass_equals_scipy_and_keeps_the_band():
    x = music(1.0, rate=RATE)
    sos = signal.butter(3, [300, 3400], btype="bandpass", fs=RATE, output="sos")
    y = run_whole("bandpass=low=300:high=3400:order=3", x)
    np.testing.assert_allclose(y, signal.sosfilt(sos, x, axis=0), atol=1e-12)
    settled = slice(RATE // 4, None)
    voice, rumble = sine(1, rate=RATE, freq=1000), sine(1, rate=RATE, freq=50)
    kept = run_whole("bandpass=low=300:high=3400", voice)[settled]
    assert abs(level_db(kept) - level_db(voice[settled])) < 0.1
    removed = run_whole("bandpass=low=300:high=3400:order=4", rumble)[settled]
    assert level_db(removed) < level_db(rumble) - 60


def test_bandpass_edges_must_be_in_order():
    with pytest.raises(ParameterError, match="'low' must be below high"):
        Pipeline.parse("bandpass=low=3000:high=300")


@pytest.mark.parametrize("seconds", [0.0, 0.5, 2.0, 10.0])
def test_fades_are_linear_ramps_from_and_to_silence(seconds):
    x = np.ones((RATE, 2))
    length = seconds * RATE
    positions = np.arange(RATE)
    faded_in = run_whole(f"fade_in=seconds={seconds}", x)
    faded_out = run_whole(f"fade_out=seconds={seconds}", x)
    expected_in = np.clip(positions / length, 0, 1) if length else np.ones(RATE)
    expected_out = np.clip((RATE - 1 - positions) / length, 0, 1) if length else np.ones(RATE)
    np.testing.assert_allclose(faded_in[:, 0], expected_in, atol=1e-12)
    np.testing.assert_allclose(faded_out[:, 1], expected_out, atol=1e-12)
    if seconds:
        assert faded_in[0, 0] == 0 and faded_out[-1, 0] == 0


def test_fade_out_is_global_and_fade_in_is_not():
    stages = Pipeline.parse("fade_in=seconds=1,gain,fade_out=seconds=1").plan(RATE, 2)
    assert [[step.name for step in stage.steps] for stage in stages] == [
        ["fade_in", "gain"],
        ["fade_out"],
    ]


RATES = [(44100, 48000), (48000, 44100), (44100, 22050), (16000, 44100), (96000, 8000)]


@pytest.mark.parametrize(("rate_in", "rate_out"), RATES)
def test_resample_equals_scipy_polyphase_on_the_whole_signal(rate_in, rate_out):
    x = music(0.5, rate=rate_in)
    y, rate = Pipeline.parse(f"resample=rate={rate_out}")(x, rate_in)
    step = Pipeline.parse(f"resample=rate={rate_out}").steps[0]
    step.bind(rate_in, 2)
    expected = signal.resample_poly(
        x, step.up, step.down, axis=0, window=lowpass_fir(step.up, step.down)
    )
    assert rate == rate_out and y.shape == expected.shape
    assert len(y) == -(-len(x) * rate_out // rate_in)
    np.testing.assert_allclose(y, expected, atol=1e-12)


@pytest.mark.parametrize(("rate_in", "rate_out"), [(44100, 48000), (48000, 44100)])
def test_resample_is_clean(rate_in, rate_out):
    # A 1 kHz tone comes out as the same tone at the new rate, with error under -100 dB ...
    y = run_whole(f"resample=rate={rate_out}", sine(1.0, rate=rate_in, freq=1000), rate_in)
    expected = sine(len(y) / rate_out, rate=rate_out, freq=1000)
    middle = slice(rate_out // 10, -rate_out // 10)
    assert level_db(y[middle] - expected[middle]) - level_db(expected[middle]) < -100
    # ... and a tone above the new Nyquist frequency is rejected, not folded back.
    if rate_out < rate_in:
        high = sine(1.0, rate=rate_in, freq=23000)
        assert level_db(run_whole(f"resample=rate={rate_out}", high, rate_in)[middle]) < -110


@pytest.mark.parametrize(("rate_in", "rate_out"), RATES)
def test_resampled_chunks_with_context_equal_the_whole(rate_in, rate_out):
    x = music(2.0, rate=rate_in)
    spec = f"highpass=freq=30,resample=rate={rate_out},lowpass=freq=3000"
    whole, _ = Pipeline.parse(spec)(x, rate_in)
    stage = Pipeline.parse(spec).plan(rate_in, 2)[0]
    frames = stage.chunk_frames(0.3)
    assert frames % stage.alignment == 0
    pieces = [
        chunk_output(stage, x, start, min(start + frames, len(x)), stage.pre_roll, stage.post_roll,
                     rate=rate_in)
        for start in range(0, len(x), frames)
    ]  # fmt: skip
    chunked = np.concatenate(pieces)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
