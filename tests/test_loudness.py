"""Loudness measured chunk by chunk: EBU Tech 3341/3342 cases, whole-file equality, references."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pyloudnorm
import pytest
from helpers import music, noise, sine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import signal

from audioserver.audio import loudness
from audioserver.audio.loudness import (
    channel_weights,
    chunk_energies,
    combine,
    integrated_loudness,
    k_weighting_sos,
    loudness_range,
    pre_roll,
    true_peak,
    true_peak_pre_roll,
)

# -- helpers ---------------------------------------------------------------------


def tone(levels_seconds: list[tuple[float, float]], *, rate: int = 48000) -> np.ndarray:
    """A stereo 1 kHz sine, in both channels, at each (dBFS peak, seconds) in turn."""
    parts = [
        sine(seconds, rate=rate, freq=1000.0, amplitude=10 ** (db / 20), channels=2)
        for db, seconds in levels_seconds
    ]
    return np.concatenate(parts)


def bounds_of(frames: int, chunk_frames: int) -> list[int]:
    """Chunk boundaries for bodies of chunk_frames (the last may be shorter)."""
    return [*range(0, frames, chunk_frames), frames]


def chunks(x: np.ndarray, bounds: list[int], pre: int) -> list[tuple[np.ndarray, int, int]]:
    """Cut x at bounds into (samples, start, pre) with up to pre frames of pre-roll each."""
    out = []
    for start, end in itertools.pairwise(bounds):
        lead = min(start, pre)
        out.append((x[start - lead : end], start, lead))
    return out


def sub_blocks(x: np.ndarray, rate: int, bounds: list[int], pre: int | None = None) -> np.ndarray:
    """Sub-block mean squares measured chunk by chunk (in shuffled order, as threads finish)."""
    pre = pre_roll(rate) if pre is None else pre
    parts = [
        chunk_energies(samples, sample_rate=rate, start=start, pre=lead)
        for samples, start, lead in chunks(x, bounds, pre)
    ]
    # The reduction is in index order; the measuring itself may happen in any order.
    return combine(parts, sample_rate=rate, total_frames=len(x))


def whole(x: np.ndarray, rate: int) -> np.ndarray:
    return sub_blocks(x, rate, [0, len(x)])


def peak_chunked(x: np.ndarray, rate: int, bounds: list[int]) -> float:
    pre = true_peak_pre_roll(rate)
    pieces = chunks(x, bounds, pre)
    return max(
        true_peak(samples, sample_rate=rate, pre=lead, last=i == len(pieces) - 1)
        for i, (samples, _, lead) in enumerate(pieces)
    )


def peak_whole(x: np.ndarray, rate: int) -> float:
    return true_peak(x, sample_rate=rate, pre=0, last=True)


# -- EBU Tech 3341 (integrated loudness) ---------------------------------------------

EBU_3341 = {
    "case1": ([(-23, 20)], -23.0),
    "case2": ([(-33, 20)], -33.0),
    "case3": ([(-36, 10), (-23, 60), (-36, 10)], -23.0),
    "case4": ([(-72, 10), (-36, 10), (-23, 60), (-36, 10), (-72, 10)], -23.0),
    "case5": ([(-26, 20), (-20, 20.1), (-26, 20)], -23.0),
}


@pytest.mark.parametrize(
    ("case", "rate", "chunk_seconds"),
    [(case, 48000, 0.3) for case in EBU_3341]
    + [("case3", 48000, 2.0), ("case1", 44100, 0.3), ("case5", 44100, 2.0)],
)
def test_ebu_3341_integrated(case: str, rate: int, chunk_seconds: float) -> None:
    levels, expected = EBU_3341[case]
    x = tone(levels, rate=rate)
    measured = integrated_loudness(
        sub_blocks(x, rate, bounds_of(len(x), round(chunk_seconds * rate)))
    )
    assert measured == pytest.approx(expected, abs=0.1)


# -- EBU Tech 3342 (loudness range) --------------------------------------------------

EBU_3342 = {
    "case1": ([(-20, 20), (-30, 20)], 10.0),
    "case2": ([(-20, 20), (-15, 20)], 5.0),
    "case3": ([(-40, 20), (-20, 20)], 20.0),
    "case4": ([(-50, 20), (-35, 20), (-20, 20), (-35, 20), (-50, 20)], 15.0),
}


@pytest.mark.parametrize("case", list(EBU_3342))
def test_ebu_3342_loudness_range(case: str) -> None:
    levels, expected = EBU_3342[case]
    x = tone(levels)
    measured = loudness_range(sub_blocks(x, 48000, bounds_of(len(x), 11025)))
    assert measured == pytest.approx(expected, abs=1.0)


# -- chunked equals whole ------------------------------------------------------------

# With the pre-roll reaching back to the stream's start, chunking changes only the order of
# additions. With the realistic pre-roll, the filter's forgotten past (under 1e-7 of full
# scale, see pre_roll) also moves the result: by under 1e-9 LU here, bounded by 1e-8.
EXACT_LU = 1e-9
PRE_ROLL_LU = 1e-8


def assert_chunked_equals_whole(x: np.ndarray, rate: int, bounds: list[int]) -> None:
    reference = whole(x, rate)
    expected = integrated_loudness(reference), loudness_range(reference)
    assert expected[0] is not None
    assert expected[1] is not None
    for pre, tolerance in [(len(x), EXACT_LU), (pre_roll(rate), PRE_ROLL_LU)]:
        chunked = sub_blocks(x, rate, bounds, pre)
        assert len(chunked) == len(reference)
        assert integrated_loudness(chunked) == pytest.approx(expected[0], abs=tolerance)
        assert loudness_range(chunked) == pytest.approx(expected[1], abs=tolerance)
    # The interpolator is a finite FIR: its pre-roll makes true peak exact.
    assert peak_chunked(x, rate, bounds) == pytest.approx(peak_whole(x, rate), abs=1e-12)


@pytest.mark.parametrize("rate", [48000, 44100, 11025])
def test_random_chunks_equal_whole(rate: int) -> None:
    x = music(8.0, rate=rate) * np.linspace(0.05, 1.0, round(8.0 * rate))[:, np.newaxis]
    generator = np.random.default_rng(rate)
    for _ in range(3):
        cuts = np.sort(generator.choice(np.arange(1, len(x)), size=20, replace=False))
        assert_chunked_equals_whole(x, rate, [0, *cuts.tolist(), len(x)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=4 * 11025), max_size=12),
    mono=st.booleans(),
)
def test_any_chunk_boundaries_equal_whole(cuts: list[int], mono: bool) -> None:
    rate = 11025
    x = music(4.0, rate=rate, channels=1 if mono else 2, seed=3)
    x[: rate // 2] *= 0.01  # a quiet start, so the gates and the percentiles have work
    assert_chunked_equals_whole(x, rate, sorted({0, len(x), *cuts}))


def test_empty_chunks_and_total_frames() -> None:
    rate = 11025
    x = noise(1.05, rate=rate)
    # Empty bodies (a chunk of 0 frames) contribute nothing and break nothing.
    bounds = [0, 0, 500, 500, 5000, len(x), len(x)]
    np.testing.assert_allclose(sub_blocks(x, rate, bounds), whole(x, rate), rtol=1e-12)
    # Only complete sub-blocks are measured: 1.05 s holds ten of them.
    assert len(whole(x, rate)) == 10
    assert peak_chunked(x, rate, bounds) == pytest.approx(peak_whole(x, rate), abs=1e-12)


def test_combine_rejects_missing_or_repeated_chunks() -> None:
    rate = 48000
    x = noise(1.0, rate=rate)
    parts = [
        chunk_energies(samples, sample_rate=rate, start=start, pre=lead)
        for samples, start, lead in chunks(x, [0, 20000, len(x)], 1000)
    ]
    with pytest.raises(ValueError, match="tile"):
        combine(parts[:1], sample_rate=rate, total_frames=len(x))
    with pytest.raises(ValueError, match="tile"):
        combine([*parts, parts[0]], sample_rate=rate, total_frames=len(x))


def test_sub_block_boundaries_at_odd_rates() -> None:
    rate = 11025  # 1102.5 frames per sub-block: boundaries round half to even
    part = chunk_energies(noise(0.5, rate=rate), sample_rate=rate, start=0, pre=0)
    assert part.first == 0
    assert part.frames.tolist() == [round(j * rate / 10) - round((j - 1) * rate / 10)
                                    for j in range(1, 6)]  # fmt: skip
    later = chunk_energies(noise(0.1, rate=rate), sample_rate=rate, start=1102, pre=0)
    assert later.first == 1  # round(1102.5) == 1102: frame 1102 opens sub-block 1


# -- independent reference -----------------------------------------------------------


@pytest.mark.parametrize("rate", [48000, 44100])
@pytest.mark.parametrize("make", [noise, music])
def test_integrated_loudness_agrees_with_pyloudnorm(rate: int, make) -> None:
    x = make(10.0, rate=rate)
    ours = integrated_loudness(sub_blocks(x, rate, bounds_of(len(x), round(0.3 * rate))))
    reference = pyloudnorm.Meter(rate).integrated_loudness(x)
    assert ours == pytest.approx(reference, abs=0.05)


# -- filter, weights, true peak ------------------------------------------------------


def test_k_weighting_matches_published_48k_coefficients() -> None:
    sos = k_weighting_sos(48000)
    assert sos.shape == (2, 6)
    sos = sos / sos[:, 3:4]  # normalise each section so that a0 = 1
    pre_filter = [1.53512485958697, -2.69169618940638, 1.19839281085285,
                  1.0, -1.69065929318241, 0.73248077421585]  # fmt: skip
    rlb = [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621]
    np.testing.assert_allclose(sos[0], pre_filter, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sos[1], rlb, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 44100, 48000, 96000])
def test_k_weighting_at_any_rate(rate: int) -> None:
    # Near +0.7 dB at 1 kHz (what the -0.691 offset corrects), the +4 dB shelf high up, no DC.
    freqs = [0.0, 1000.0, min(8000.0, 0.4 * rate)]
    _, response = signal.sosfreqz(k_weighting_sos(rate), worN=freqs, fs=rate)
    gains = 20 * np.log10(np.maximum(np.abs(response), 1e-300))
    assert gains[0] < -100
    assert gains[1] == pytest.approx(0.691, abs=0.03)
    assert gains[2] == pytest.approx(4.0, abs=0.3)


def test_pre_roll_settles_the_filter() -> None:
    rate = 48000
    frames = pre_roll(rate)
    assert 1000 < frames < 20000
    impulse = np.zeros(4 * frames)
    impulse[0] = 1.0
    response = signal.sosfilt(k_weighting_sos(rate), impulse)
    assert np.sum(np.abs(response[frames:])) < 1e-7


def test_channel_weights() -> None:
    assert channel_weights(1).tolist() == [1.0]
    assert channel_weights(2).tolist() == [1.0, 1.0]
    assert channel_weights(6).tolist() == [1.0, 1.0, 1.0, 0.0, 1.41, 1.41]
    assert channel_weights(5).tolist() == [1.0, 1.0, 1.0, 1.41, 1.41]
    assert channel_weights(8)[3] == 0.0


def test_true_peak_between_samples() -> None:
    rate = 48000
    t = np.arange(rate) / rate
    # Faded in and out over 10 ms: a sine that starts at full scale makes the interpolator
    # ring at its edge (a real overshoot of that signal, not the steady state measured here).
    ramp = np.clip(np.minimum(t, t[::-1]) / 0.01, 0, 1)
    x = (0.5 * ramp * np.sin(2 * np.pi * (rate / 4) * t + np.pi / 4))[:, np.newaxis]
    assert np.max(np.abs(x)) < 0.5 * 10 ** (-2.9 / 20)  # samples miss the peak by 3 dB
    peak = peak_chunked(x, rate, bounds_of(len(x), 7001))
    assert 20 * np.log10(peak / 0.5) == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("rate", [44100, 96000, 192000])
def test_true_peak_is_at_least_sample_peak(rate: int) -> None:
    x = music(1.0, rate=rate)
    peak = peak_whole(x, rate)
    assert peak >= np.max(np.abs(x))
    assert peak == pytest.approx(peak_chunked(x, rate, bounds_of(len(x), 3001)), abs=1e-12)
    assert true_peak_pre_roll(rate) >= 0


# -- silence -------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0, 0.25, 5.0])
def test_silence_measures_none_without_warnings(seconds: float) -> None:
    rate = 44100
    x = np.zeros((round(seconds * rate), 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blocks = sub_blocks(x, rate, bounds_of(len(x), 9999) if len(x) else [0, 0])
        assert integrated_loudness(blocks) is None
        assert loudness_range(blocks) is None
        assert true_peak(x, sample_rate=rate, pre=0, last=True) == 0.0


def test_too_short_or_too_steady_for_a_measure() -> None:
    rate = 48000
    short = sine(0.35, rate=rate)
    assert integrated_loudness(whole(short, rate)) is None  # under one 400 ms gating block
    steady = sine(5.0, rate=rate, freq=1000.0, amplitude=10 ** (-23 / 20))
    assert loudness_range(whole(steady, rate)) == pytest.approx(0.0, abs=0.01)
    assert loudness_range(whole(sine(3.05, rate=rate), rate)) is None  # one short-term value


def direct_true_peak(x: np.ndarray, rate: int) -> float:
    """Every oversampled sample of the whole signal, by scipy's upfirdn (no shortcuts).

    Phase 0 of the interpolator is the input itself (up to its window's rounding of
    1e-5): the samples stand for it.
    """
    factor = loudness._oversampling(rate)
    interpolated = signal.upfirdn(loudness._interpolator(factor), x, up=factor, axis=0)
    between = [interpolated[j::factor] for j in range(1, factor)]
    return float(max(np.max(np.abs(x)), *(np.max(np.abs(phase)) for phase in between)))


@pytest.mark.parametrize("rate", [44100, 96000])
@pytest.mark.parametrize(
    "kind", ["noise", "fs/4 sine", "clicks", "quiet then loud", "silence", "square"]
)
def test_true_peak_equals_the_full_interpolation(kind, rate):
    n = rate // 2
    t = np.arange(n) / rate
    x = {
        "noise": np.random.default_rng(5).normal(0, 0.2, (n, 2)),
        "fs/4 sine": 0.5 * np.sin(2 * np.pi * rate / 4 * t + np.pi / 4)[:, None] * [1, 0.7],
        "clicks": np.where(np.arange(n)[:, None] % 997 == 0, 0.9, 0.0) * [1, -1],
        "quiet then loud": np.sin(2 * np.pi * 1000 * t)[:, None]
        * np.where(t < 0.25, 0.01, 0.8)[:, None],
        "silence": np.zeros((n, 2)),
        "square": np.sign(np.sin(2 * np.pi * 997 * t))[:, None] * [0.5, 0.5],
    }[kind]
    expected = direct_true_peak(x, rate)
    size = 4000
    pre = loudness.true_peak_pre_roll(rate)
    chunked = max(
        loudness.true_peak(
            x[max(0, start - pre) : start + size], sample_rate=rate, pre=min(pre, start),
            last=start + size >= n,
        )
        for start in range(0, n, size)
    )  # fmt: skip
    assert chunked == pytest.approx(expected, rel=1e-6, abs=1e-12)  # float32 convolution


def test_true_peak_leaves_out_only_frames_under_the_floor():
    rate = 44100
    x = np.random.default_rng(8).normal(0, 0.2, (rate // 2, 2))
    exact = direct_true_peak(x, rate)
    sample_peak = float(np.max(np.abs(x)))
    assert exact > sample_peak  # an inter-sample peak, which only interpolation finds
    below = true_peak(x, sample_rate=rate, pre=0, last=True, floor=0.9 * exact)
    assert below == pytest.approx(exact, rel=1e-6)
    above = true_peak(x, sample_rate=rate, pre=0, last=True, floor=1.5 * exact)
    assert sample_peak <= above <= exact * (1 + 1e-6)
