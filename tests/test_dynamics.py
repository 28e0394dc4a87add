"""The compressor against a plain per-sample reference, its static curve, timing and seams."""

from __future__ import annotations

import math
import subprocess
import sys

import helpers
import numpy as np
import pytest
from helpers import music, noise, sine

import audioserver.audio.steps.dynamics  # noqa: F401  (registers the compressor)
from audioserver.audio.pipeline import Pipeline
from audioserver.audio.steps import Block
from audioserver.audio.steps.dynamics import MAX_REDUCTION_DB, SETTLE_DB
from audioserver.exceptions import ParameterError

RATE = 8000


def run_whole(spec: str, x: np.ndarray, rate: int = RATE) -> np.ndarray:
    return helpers.run_whole(spec, x, rate)


def reference(x, rate, threshold_db=-20.0, ratio=4.0, attack_ms=10.0, release_ms=100.0,
              makeup_db=0.0):  # fmt: skip
    """The compressor's equations, one sample at a time (independent of the vectorised code)."""
    a_att = math.exp(-1.0 / (attack_ms / 1000.0 * rate))
    a_rel = math.exp(-1.0 / (release_ms / 1000.0 * rate))
    out = np.empty_like(x)
    y = 0.0
    for n in range(len(x)):
        peak = max(abs(float(v)) for v in x[n])
        level = 20.0 * math.log10(peak) if peak > 1e-10 else -200.0
        gr = min(0.0, (threshold_db - level) * (1.0 - 1.0 / ratio))
        a = a_att if gr < y else a_rel
        y = a * y + (1.0 - a) * gr
        gain = 10.0 ** ((y + makeup_db) / 20.0)
        for c in range(x.shape[1]):
            out[n, c] = x[n, c] * gain
    return out


def square(seconds: float, amplitude: float, rate: int = RATE, channels: int = 2) -> np.ndarray:
    """A 1 kHz square wave: |x| is the same at every frame, so the level is steady."""
    t = np.arange(round(seconds * rate)) / rate
    signs = np.where(np.sin(2 * np.pi * 1000 * t + 0.1) >= 0, 1.0, -1.0)
    return amplitude * np.repeat(signs[:, np.newaxis], channels, axis=1)


def gain_db(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The gain applied at each frame, in dB (x must have no zero)."""
    return 20 * np.log10(np.abs(y[:, 0]) / np.abs(x[:, 0]))


OPTIONS = [
    {},
    {"threshold_db": -30, "ratio": 20, "attack_ms": 0.1, "release_ms": 2000, "makeup_db": 12},
    {"threshold_db": -6, "ratio": 2, "attack_ms": 50, "release_ms": 5, "makeup_db": -3},
    {"threshold_db": -60, "ratio": 1, "attack_ms": 1, "release_ms": 1},
    {"threshold_db": 0, "ratio": 8, "attack_ms": 500, "release_ms": 1, "makeup_db": 40},
]


def spec_of(options: dict) -> str:
    text = ":".join(f"{name}={value}" for name, value in options.items())
    return f"compressor={text}" if text else "compressor"


@pytest.mark.parametrize("options", OPTIONS)
def test_compressor_equals_a_per_sample_reference(options):
    x = music(0.2, rate=RATE) * 1.5  # some frames above full scale too
    x[400:600] = 0.0  # digital silence
    x[:, 1] *= 0.5  # channels of different levels: the louder one leads
    expected = reference(x, RATE, **options)
    np.testing.assert_allclose(run_whole(spec_of(options), x), expected, rtol=0, atol=1e-9)


def test_mono_and_many_channels_are_supported():
    for channels in (1, 5):
        x = noise(0.1, rate=RATE, channels=channels)
        np.testing.assert_allclose(run_whole("compressor", x), reference(x, RATE), atol=1e-9)


@pytest.mark.parametrize("makeup_db", [0.0, 6.0])
def test_a_steady_level_settles_on_the_static_curve(makeup_db):
    x = square(1.0, 10 ** (-6 / 20))
    y = run_whole(f"compressor=threshold_db=-20:ratio=4:makeup_db={makeup_db}", x)
    settled = 20 * np.log10(np.max(np.abs(y[-RATE // 10 :])))
    assert settled == pytest.approx(-20 + 14 / 4 + makeup_db, abs=1e-6)


@pytest.mark.parametrize("makeup_db", [0.0, 6.0])
def test_a_steady_sine_settles_on_the_static_curve_with_fast_attack_and_slow_release(makeup_db):
    # The detector follows |x| sample by sample: between a sine's peaks the release lets
    # the gain rise, so a sine meets the static curve when release is slow next to attack.
    rate = 48000
    x = sine(3.0, rate=rate, freq=1000, amplitude=10 ** (-6 / 20))
    y = run_whole(
        f"compressor=threshold_db=-20:ratio=4:attack_ms=0.1:release_ms=2000:makeup_db={makeup_db}",
        x,
        rate,
    )
    settled = 20 * np.log10(np.max(np.abs(y[-rate // 10 :])))
    assert settled == pytest.approx(-16.5 + makeup_db, abs=0.1)


def test_below_the_threshold_nothing_changes_but_the_makeup():
    x = sine(1.0, rate=RATE, freq=1000, amplitude=10 ** (-21 / 20))
    assert np.array_equal(run_whole("compressor=threshold_db=-20", x), x)
    np.testing.assert_allclose(
        run_whole("compressor=threshold_db=-20:makeup_db=6", x), x * 10 ** (6 / 20), rtol=1e-12
    )


def test_ratio_one_changes_nothing():
    x = music(0.5, rate=RATE)
    np.testing.assert_allclose(run_whole("compressor=threshold_db=-60:ratio=1", x), x, rtol=1e-12)


def test_silence_stays_silent_without_warnings():
    assert not np.any(run_whole("compressor=makeup_db=40", np.zeros((1000, 2))))


@pytest.mark.parametrize(("attack_ms", "release_ms"), [(10, 100), (1, 500), (50, 20)])
def test_attack_and_release_reach_63_percent_after_their_time(attack_ms, release_ms):
    rate = 48000
    quiet, loud = 10 ** (-40 / 20), 10 ** (-6 / 20)  # below, and 14 dB above, the threshold
    step = rate // 2
    x = np.concatenate(
        [square(0.5, quiet, rate), square(3.0, loud, rate), square(5.0, quiet, rate)]
    )
    spec = f"compressor=threshold_db=-20:ratio=4:attack_ms={attack_ms}:release_ms={release_ms}"
    gain = gain_db(run_whole(spec, x, rate), x)
    final = -14 * (1 - 1 / 4)
    assert np.all(gain[:step] == 0)
    attack = gain[step : step + 3 * rate]
    assert attack[-1] == pytest.approx(final, abs=1e-6)
    reached = np.argmax(attack <= final * (1 - math.exp(-1))) / rate * 1000
    assert reached == pytest.approx(attack_ms, rel=0.02, abs=0.05)
    release = gain[step + 3 * rate :]
    recovered = np.argmax(release >= final * math.exp(-1)) / rate * 1000
    assert recovered == pytest.approx(release_ms, rel=0.02, abs=0.05)
    assert release[-1] == pytest.approx(0, abs=1e-3)


@pytest.mark.parametrize(
    ("options", "slowest_ms", "frames"),
    [
        ({}, 100, 71081),
        ({"attack_ms": 0.1, "release_ms": 2000}, 2000, 1421617),
        ({"attack_ms": 500, "release_ms": 1}, 500, 355405),
    ],
)
def test_pre_roll_is_16_time_constants_of_the_slower_smoothing(options, slowest_ms, frames):
    rate = 44100
    pre_roll = Pipeline.parse(spec_of(options)).plan(rate, 2)[0].pre_roll
    assert pre_roll == frames
    # The least N with MAX_REDUCTION_DB * a**N <= SETTLE_DB, a the slower coefficient.
    a = math.exp(-1 / (slowest_ms / 1000 * rate))
    assert MAX_REDUCTION_DB * a**pre_roll <= SETTLE_DB < MAX_REDUCTION_DB * a ** (pre_roll - 1)


def chunk_output(stage, x, start, stop, pre_roll, post_roll=0, rate=RATE):
    return helpers.chunk_output(stage, x, start, stop, pre_roll, post_roll, rate=rate)


SEAM_OPTIONS = [
    {},
    {"attack_ms": 0.1, "release_ms": 2000},
    {"threshold_db": -40, "ratio": 20, "attack_ms": 0.1, "release_ms": 1, "makeup_db": 40},
    {"threshold_db": -30, "ratio": 3, "attack_ms": 500, "release_ms": 2000, "makeup_db": 10},
]


@pytest.mark.parametrize("options", SEAM_OPTIONS)
def test_a_chunk_with_its_pre_roll_equals_the_same_part_of_the_whole(options):
    spec = spec_of(options)
    stage = Pipeline.parse(spec).plan(RATE, 2)[0]
    seconds = stage.pre_roll / RATE + 3
    x = music(seconds, rate=RATE)
    whole = run_whole(spec, x)
    start, stop = stage.pre_roll + RATE + 123, stage.pre_roll + 2 * RATE
    chunked = chunk_output(stage, x, start, stop, stage.pre_roll)
    assert np.max(np.abs(chunked - whole[start:stop])) <= 1e-4
    # Without the pre-roll the seam would show: the test above would catch a zero pre-roll.
    assert np.max(np.abs(chunk_output(stage, x, start, stop, 0) - whole[start:stop])) > 1e-2


@pytest.mark.parametrize("options", SEAM_OPTIONS[1:])
def test_the_pre_roll_covers_the_slowest_recovery(options):
    # The worst case: the whole signal's gain is deeply reduced (full scale, far above the
    # threshold) exactly where the chunk's pre-roll starts, from 0 dB; a quiet signal
    # just under the threshold follows, so the reduction only releases.
    spec = spec_of(options)
    stage = Pipeline.parse(spec).plan(RATE, 2)[0]
    threshold = options.get("threshold_db", -20)
    loud = square(1.0, 1.0)
    quiet = music(stage.pre_roll / RATE + 1.0, rate=RATE)
    quiet *= 10 ** ((threshold - 0.01) / 20) / np.max(np.abs(quiet))
    x = np.concatenate([loud, quiet])
    whole = run_whole(spec, x)
    start = len(loud) + stage.pre_roll
    chunked = chunk_output(stage, x, start, start + RATE // 2, stage.pre_roll)
    assert np.max(np.abs(chunked - whole[start : start + RATE // 2])) <= 1e-4


def test_process_does_not_change_the_step():
    (step,) = Pipeline.parse("compressor").plan(RATE, 2)[0].steps
    before = dict(vars(step))
    step.process(Block(music(0.5, rate=RATE), RATE, 0))
    assert vars(step) == before


@pytest.mark.parametrize(
    ("spec", "parameter", "words"),
    [
        ("compressor=ratio=30", "ratio", "between 1 and 20"),
        ("compressor=ratio=0.5", "ratio", "between 1 and 20"),
        ("compressor=threshold_db=1", "threshold_db", "between -60 and 0 dBFS"),
        ("compressor=threshold_db=-61", "threshold_db", "between -60 and 0 dBFS"),
        ("compressor=attack_ms=0", "attack_ms", "between 0.1 and 500 ms"),
        ("compressor=release_ms=2001", "release_ms", "between 1 and 2000 ms"),
        ("compressor=makeup_db=41", "makeup_db", "between -20 and 40 dB"),
        ("compressor=ratio=nan", "ratio", "finite"),
        ("compressor=knee=3", "knee", "unknown parameter"),
    ],
)
def test_out_of_range_parameters_name_step_and_parameter(spec, parameter, words):
    with pytest.raises(ParameterError) as caught:
        Pipeline.parse(spec)
    assert caught.value.code == "invalid_pipeline"
    assert caught.value.extra == {"step": "compressor", "parameter": parameter, "position": 1}
    assert caught.value.message.startswith("Step 1 'compressor'")
    assert words in caught.value.message


def test_positional_options_follow_the_declared_order():
    assert Pipeline.parse("compressor=-18:3").to_json() == [
        {
            "step": "compressor",
            "threshold_db": -18.0,
            "ratio": 3.0,
            "attack_ms": 10.0,
            "release_ms": 100.0,
            "makeup_db": 0.0,
        }
    ]


def test_the_catalogue_entry_and_example():
    entry = Pipeline.parse("compressor").steps[0].catalogue()
    assert entry["kind"] == "stateful"
    assert [p["name"] for p in entry["parameters"]] == [
        "threshold_db",
        "ratio",
        "attack_ms",
        "release_ms",
        "makeup_db",
    ]
    assert all(p["description"] for p in entry["parameters"])
    Pipeline.parse(entry["example"])


def test_importing_the_module_does_not_import_numba():
    code = (
        "import sys, audioserver.audio.steps.dynamics; "
        "assert 'numba' not in sys.modules, 'numba imported at module import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
