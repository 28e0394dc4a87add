"""Loudness (ITU-R BS.1770-4, EBU R128) measured chunk by chunk, equal to the whole-file measure.

Every measure here reduces to sums that can be cut anywhere and added back:

- **Loudness.** The K-weighted, channel-weighted energy ``sum_c G_c * y_c**2``
  is summed per 100 ms sub-block (sub-block ``j`` covers absolute frames
  ``[round(j * rate / 10), round((j + 1) * rate / 10))``). A chunk reports
  the partial sums of the sub-blocks its body touches (``chunk_energies``);
  ``combine`` adds the partial sums of neighbouring chunks by sub-block index
  and turns the complete sub-blocks into mean squares. Gating blocks (400 ms,
  hop 100 ms) and short-term windows (3 s, hop 100 ms) are whole numbers of
  sub-blocks, so ``integrated_loudness`` and ``loudness_range`` need nothing
  but that array. The K-weighting filter is stateful: each chunk runs it
  over its pre-roll first (``pre_roll``: until the filter's response to
  earlier audio is below 1e-7), so its state at the body equals the state
  of one pass over the whole file.
- **True peak.** A fixed polyphase FIR interpolator (4x below 96 kHz) is a
  finite convolution: each interpolated sample depends on a known window of
  input frames. Each chunk computes exactly the interpolated samples "owned"
  by its body frames, with its pre-roll as left context
  (``true_peak_pre_roll``), and the last chunk also the filter's tail after
  the end; the maximum over chunks is the whole signal's true peak.

Functions take the samples as the only positional argument: float arrays of
shape (frames, channels), full scale at +-1; everything else is keyword-only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import signal

from . import biquads
from .steps.filters import settle_frames

SUB_BLOCK_SECONDS = 0.1
GATING_BLOCK_SUB_BLOCKS = 4  # 400 ms gating blocks, 100 ms hop (75 % overlap)
SHORT_TERM_SUB_BLOCKS = 30  # 3 s short-term windows, 100 ms hop (EBU Tech 3342)
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
LRA_RELATIVE_GATE_LU = -20.0
LRA_PERCENTILES = (0.10, 0.95)
LOUDNESS_OFFSET = -0.691  # BS.1770: makes a 1 kHz sine read its level in dBFS (per channel)
SURROUND_WEIGHT = 1.41
TRUE_PEAK_TAPS_PER_PHASE = 12  # taps per phase, as ITU-R BS.1770's example: the FIR's context
_TRUE_PEAK_ATTENUATION_DB = 80.0  # stop-band of the interpolator's Kaiser design

# BS.1770-4 K-weighting analog prototypes, as derived by libebur128 (and pyloudnorm) from the
# standard's 48 kHz coefficients: a high shelf (the head's acoustic effect), then the RLB
# high-pass. The bilinear transform with these, pre-warped at f0, gives any sample rate.
_SHELF_F0 = 1681.974450955533
_SHELF_GAIN_DB = 3.999843853973347
_SHELF_Q = 0.7071752369554196
_SHELF_VB_EXPONENT = 0.4996667741545416
_HIGHPASS_F0 = 38.13547087602444
_HIGHPASS_Q = 0.5003270373238773


def k_weighting_sos(sample_rate: int) -> np.ndarray:
    """Return the K-weighting filter (pre-filter, then RLB high-pass) as (2, 6) normalised sos."""
    k = math.tan(math.pi * _SHELF_F0 / sample_rate)
    vh = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    vb = vh**_SHELF_VB_EXPONENT
    a0 = 1.0 + k / _SHELF_Q + k * k
    shelf = [
        (vh + vb * k / _SHELF_Q + k * k) / a0,
        2.0 * (k * k - vh) / a0,
        (vh - vb * k / _SHELF_Q + k * k) / a0,
        1.0,
        2.0 * (k * k - 1.0) / a0,
        (1.0 - k / _SHELF_Q + k * k) / a0,
    ]
    k = math.tan(math.pi * _HIGHPASS_F0 / sample_rate)
    a0 = 1.0 + k / _HIGHPASS_Q + k * k
    # The standard's RLB numerator is [1, -2, 1] unscaled: its gain at Nyquist is not exactly
    # one, and the published coefficients (and so the -0.691 offset) assume that.
    highpass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / _HIGHPASS_Q + k * k) / a0]
    return np.array([shelf, highpass], dtype=np.float64)


def channel_weights(channels: int) -> np.ndarray:
    """Return the BS.1770 weight G_i of each channel, assuming ffmpeg's default channel orders.

    1-3 channels (mono, stereo, L R C): 1.0 each. 4: quad L R Ls Rs. 5: L R C Ls Rs.
    6: 5.1 as ffmpeg orders it, L R C LFE Ls Rs (the LFE is not counted). More than
    six: the first six as 5.1, the others at 1.0 (their positions are unknown: counted,
    unweighted).
    """
    if channels < 1:
        raise ValueError(f"need at least one channel, got {channels}")
    weights = np.ones(channels, dtype=np.float64)
    if channels == 4:
        weights[2:] = SURROUND_WEIGHT
    elif channels == 5:
        weights[3:] = SURROUND_WEIGHT
    elif channels >= 6:
        weights[3] = 0.0
        weights[4:6] = SURROUND_WEIGHT
    return weights


def pre_roll(sample_rate: int) -> int:
    """Return the frames of pre-roll after which K-weighting has forgotten earlier audio (1e-7)."""
    return settle_frames(k_weighting_sos(sample_rate))


# -- sub-blocks ----------------------------------------------------------------------


def _sub_block_starts(indices: np.ndarray, sample_rate: int) -> np.ndarray:
    """Return the first absolute frame of each sub-block index: round(j * rate / 10)."""
    # j * rate is an exact integer; dividing by 10 in float64 is exact at the .5 ties
    # (below 2**52), so rint's round-half-to-even matches Python's round().
    scaled = np.asarray(indices, dtype=np.int64) * sample_rate
    return np.rint(scaled / round(1 / SUB_BLOCK_SECONDS)).astype(np.int64)


def _sub_block_of(frame: int, sample_rate: int) -> int:
    """Return the index of the sub-block holding an absolute frame."""
    index = frame * round(1 / SUB_BLOCK_SECONDS) // sample_rate
    # Rounding the boundaries can move a frame into the next sub-block, never further.
    if _sub_block_starts(np.array([index + 1]), sample_rate)[0] <= frame:
        index += 1
    return int(index)


@dataclass(frozen=True)
class Energies:
    """One chunk's contribution to loudness: partial energy sums of the sub-blocks it touches."""

    first: int  # absolute index of the first 100 ms sub-block the body touches
    sums: np.ndarray  # float64: per sub-block, sum over the body's frames of sum_c G_c y_c**2
    frames: np.ndarray  # int64: frames of the body that fell in each sub-block


def chunk_energies(samples: np.ndarray, *, sample_rate: int, start: int, pre: int) -> Energies:
    """Return the body's K-weighted energy per sub-block; the first pre frames are pre-roll."""
    samples = np.asarray(samples, dtype=np.float64)
    first = _sub_block_of(start, sample_rate)
    if len(samples) <= pre:
        return Energies(first, np.zeros(0), np.zeros(0, dtype=np.int64))
    weights = channel_weights(samples.shape[1])
    # Filtering the pre-roll too brings the filter to the state it has at the body's first
    # frame in one pass over the whole stream (exactly so when the pre-roll reaches frame 0).
    # One pass: the filter, the squares and the channels' weighted sum (see biquads.py).
    power = biquads.k_weighted_power(
        k_weighting_sos(sample_rate), samples, weights=weights, skip=pre
    )
    length = len(power)
    last = _sub_block_of(start + length - 1, sample_rate)
    inner = _sub_block_starts(np.arange(first + 1, last + 1), sample_rate) - start
    offsets = np.concatenate([[0], inner]).astype(np.intp)
    # reduceat sums each segment on its own: no cancellation as with differences of a cumsum.
    sums = np.add.reduceat(power, offsets)
    frames = np.diff(np.append(offsets, length)).astype(np.int64)
    return Energies(first, sums, frames)


def combine(parts: Sequence[Energies], *, sample_rate: int, total_frames: int) -> np.ndarray:
    """Return the mean square of every complete sub-block of the stream, from all chunks' parts.

    Raises ValueError if the chunks' bodies do not cover the complete sub-blocks exactly
    once (a chunk missing or counted twice).
    """
    complete = _sub_block_of(total_frames, sample_rate)  # sub-blocks that end by total_frames
    index = np.concatenate(
        [np.zeros(0, dtype=np.int64)]
        + [part.first + np.arange(len(part.sums), dtype=np.int64) for part in parts]
    )
    sums = np.concatenate([np.zeros(0)] + [part.sums for part in parts])
    frames = np.concatenate([np.zeros(0, dtype=np.int64)] + [part.frames for part in parts])
    keep = index < complete  # the trailing partial sub-block is not measured (BS.1770)
    energy = np.bincount(index[keep], weights=sums[keep], minlength=complete)
    counted = np.bincount(index[keep], weights=frames[keep], minlength=complete)
    lengths = np.diff(_sub_block_starts(np.arange(complete + 1), sample_rate))
    if not np.array_equal(counted, lengths):
        raise ValueError("the chunks' bodies do not tile the stream's sub-blocks")
    return energy / lengths


def complete_prefix(sub_blocks: np.ndarray, *, sample_rate: int, total_frames: int) -> np.ndarray:
    """Return the sub-blocks of a stream's first total_frames frames, as combine() would.

    sub_blocks are the mean squares of a longer stream's complete sub-blocks; those
    that end by total_frames are the ones a measure of its first total_frames frames
    counts (a sub-block's mean square depends on its own frames only).
    """
    return sub_blocks[: _sub_block_of(total_frames, sample_rate)]


# -- gating --------------------------------------------------------------------------


def _energy(loudness: float) -> float:
    """Return the mean square that reads as this loudness."""
    energy: float = 10.0 ** ((loudness - LOUDNESS_OFFSET) / 10.0)
    return energy


def _loudness(energy: float) -> float:
    """Return the loudness of a (positive) mean square."""
    return LOUDNESS_OFFSET + 10.0 * math.log10(energy)


def _windows(sub_blocks: np.ndarray, size: int) -> np.ndarray:
    """Return the mean of every run of size consecutive sub-blocks (hop: one sub-block)."""
    sub_blocks = np.asarray(sub_blocks, dtype=np.float64)
    if len(sub_blocks) < size:
        return np.zeros(0)
    # Summing each window directly, not by cumsum differences: a quiet window after a loud
    # passage keeps its precision, and never comes out negative.
    means: np.ndarray = np.lib.stride_tricks.sliding_window_view(sub_blocks, size).mean(axis=1)
    return means


def integrated_loudness(sub_blocks: np.ndarray) -> float | None:
    """Return the BS.1770-4 gated integrated loudness in LUFS, None if no block passes the gates.

    Sub-blocks weigh the same in a gating block: at rates where 100 ms is not a whole
    number of frames they differ by one frame, a difference far under 0.001 LU.
    """
    blocks = _windows(sub_blocks, GATING_BLOCK_SUB_BLOCKS)
    # Gating compares energies, so silent blocks never reach a log10(0).
    gated = blocks[blocks > _energy(ABSOLUTE_GATE_LUFS)]
    if gated.size == 0:
        return None
    relative = gated.mean() * 10.0 ** (RELATIVE_GATE_LU / 10.0)
    gated = gated[gated > relative]
    return _loudness(float(gated.mean())) if gated.size else None


def loudness_range(sub_blocks: np.ndarray) -> float | None:
    """Return the EBU Tech 3342 loudness range in LU, None if under two values pass the gates."""
    windows = _windows(sub_blocks, SHORT_TERM_SUB_BLOCKS)
    gated = windows[windows > _energy(ABSOLUTE_GATE_LUFS)]
    if gated.size < 2:
        return None
    relative = gated.mean() * 10.0 ** (LRA_RELATIVE_GATE_LU / 10.0)
    gated = np.sort(gated[gated >= relative])
    if gated.size < 2:
        return None
    # The nearest-rank percentile of EBU Tech 3342's reference code and libebur128.
    low, high = (int((gated.size - 1) * share + 0.5) for share in LRA_PERCENTILES)
    return 10.0 * math.log10(gated[high] / gated[low])


# -- true peak -----------------------------------------------------------------------


def _oversampling(sample_rate: int) -> int:
    """Return the oversampling factor for true peak at this sample rate."""
    return 4 if sample_rate < 96000 else 2 if sample_rate < 192000 else 1


@functools.lru_cache(maxsize=32)
def _interpolator(factor: int) -> np.ndarray:
    """Return the interpolation FIR for an oversampling factor (read-only, gain factor)."""
    if factor == 1:
        taps = np.ones(1)
    else:
        # Odd length factor * T + 1: the delay is a whole number of input frames, so the
        # output grid holds the original instants (and the midpoints a peak may fall on).
        taps = factor * signal.firwin(
            factor * TRUE_PEAK_TAPS_PER_PHASE + 1,
            1.0 / factor,
            window=("kaiser", signal.kaiser_beta(_TRUE_PEAK_ATTENUATION_DB)),
        )
    taps.setflags(write=False)
    return taps


def true_peak_pre_roll(sample_rate: int) -> int:
    """Return the frames of pre-roll true_peak needs (the interpolator's whole span, 2L)."""
    return 0 if _oversampling(sample_rate) == 1 else TRUE_PEAK_TAPS_PER_PHASE


@functools.lru_cache(maxsize=32)
def _phases(factor: int) -> np.ndarray:
    """Return the interpolator's phases that fall between input frames, float32 (n, T + 1).

    Oversampled sample j of frame p is sum_k taps[j + k * factor] * x[p - k]. Phase 0
    is a unit impulse (the sinc is zero at every other multiple of factor): it gives
    the input frames themselves, which the sample peak already covers.
    """
    taps = _interpolator(factor)
    span = TRUE_PEAK_TAPS_PER_PHASE + 1
    phases = np.zeros((factor - 1, span), dtype=np.float32)
    for j in range(1, factor):
        phase = taps[j::factor]
        phases[j - 1, : len(phase)] = phase
    phases.setflags(write=False)
    return phases


def true_peak_gain(sample_rate: int) -> float:
    """Return how far above its largest input frame an interpolated sample can be (a factor)."""
    factor = _oversampling(sample_rate)
    return 1.0 if factor == 1 else float(np.abs(_phases(factor)).sum(axis=1).max())


def true_peak(
    samples: np.ndarray,
    *,
    sample_rate: int,
    pre: int,
    last: bool,
    sample_peak: float | None = None,
    floor: float = 0.0,
) -> float:
    """Return the linear true peak owned by the body of a chunk with pre frames of pre-roll.

    Output frame p of the interpolator (its ``factor`` samples) depends on input frames
    p - T .. p; a chunk owns the output frames of its body frames, the last chunk also
    the filter's tail after the end. The max over chunks is that of one pass over the
    whole signal when each pre-roll is at least true_peak_pre_roll(rate) frames or reaches
    the stream's start (a shorter pre-roll is taken to be the start: zeros before it).
    Like libebur128, the result is never below the body's sample peak. Each phase is a
    product in float32 (a relative error near 1e-7, a millionth of a dB).

    Only output frames that can exceed what is already known are interpolated: one
    whose inputs all stay under max(sample peak, floor) / true_peak_gain cannot reach
    it. ``floor`` is a value the caller knows the whole signal's true peak reaches (0:
    none); frames under it may be left out, so the result is exact when it is above
    the floor, and otherwise lies between the sample peak and the floor.
    """
    factor = _oversampling(sample_rate)
    body = len(samples) - pre
    if sample_peak is not None:  # the caller knows it already
        peak = sample_peak
    else:
        peak = float(np.max(np.abs(samples[pre:]))) if body > 0 else 0.0
    if factor == 1 or (body == 0 and not last):
        return peak
    context = TRUE_PEAK_TAPS_PER_PHASE
    first = max(pre - context, 0)
    lead, tail = max(context - pre, 0), (context if last else 0)
    # One copy: channels first, float32, with zeros before the stream's start and after
    # its end (where the chunk has no pre-roll, or is the last).
    channels = np.zeros((samples.shape[1], lead + len(samples) - first + tail), dtype=np.float32)
    channels[:, lead : lead + len(samples) - first] = samples[first:].T
    # Output frame p's inputs, oldest first, are window[p - T .. p]: one row of the sliding
    # view, whose product with the time-reversed phases gives every oversampled sample.
    reversed_phases = np.ascontiguousarray(_phases(factor)[:, ::-1].T)
    outputs = _candidates(channels, max(peak, floor) / (true_peak_gain(sample_rate) * _MARGIN))
    for channel in channels:
        inputs = np.lib.stride_tricks.sliding_window_view(channel, context + 1)
        if outputs is not None:
            inputs = inputs[outputs]
        interpolated = inputs @ reversed_phases
        if interpolated.size:
            peak = max(peak, float(interpolated.max()), -float(interpolated.min()))
    return peak


# How much float32 rounding may lift an interpolated sample over its exact bound.
_MARGIN = 1.0 + 1e-5
# Interpolating a subset costs a gather; below this share of the frames it pays.
_SUBSET_SHARE = 0.5


def _candidates(channels: np.ndarray, threshold: float) -> np.ndarray | None:
    """Return the output frames whose inputs reach threshold on some channel (None: all of them).

    Output frame i (a row of the sliding view) reads columns i .. i + T.
    """
    span = TRUE_PEAK_TAPS_PER_PHASE + 1
    loud = np.zeros(channels.shape[1] + 1, dtype=np.int32)
    np.cumsum(np.any(np.abs(channels) >= threshold, axis=0), out=loud[1:])
    outputs = np.flatnonzero(loud[span:] > loud[:-span])
    if len(outputs) > _SUBSET_SHARE * (channels.shape[1] - span + 1):
        return None
    return outputs
