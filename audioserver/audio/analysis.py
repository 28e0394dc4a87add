"""Per-chunk analysis sent with every audio_chunk: levels, waveform and spectrum.

All functions take the samples as the only positional argument: float
arrays of shape (frames, channels), full scale at +-1.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import signal

SILENCE_DB = -120.0  # the level reported for digital silence (JSON has no -inf)
WAVEFORM_PER_SECOND = 100
SPECTRUM_BANDS = 64
SPECTRUM_LOW_HZ = 20.0
_SPECTRUM_SEGMENT = 8192


def to_db(power_or_amplitude: np.ndarray | float, *, power: bool = False) -> np.ndarray | float:
    """Return a level in dB, SILENCE_DB for zero."""
    factor = 10.0 if power else 20.0
    value = np.maximum(np.asarray(power_or_amplitude, dtype=np.float64), 1e-300)
    return np.maximum(factor * np.log10(value), SILENCE_DB)


def levels(samples: np.ndarray) -> tuple[float, float]:
    """Return (sample peak, RMS) in dBFS over every channel; a full-scale sine has RMS -3 dBFS."""
    if samples.size == 0:
        return SILENCE_DB, SILENCE_DB
    peak = float(np.max(np.abs(samples)))
    mean_square = float(np.mean(np.square(samples, dtype=np.float64)))
    return float(to_db(peak)), float(to_db(mean_square, power=True))


def waveform_index(frame: int, *, sample_rate: int) -> int:
    """Return the index of the 1/100 s waveform bin that holds a frame of the stream."""
    return frame * WAVEFORM_PER_SECOND // sample_rate


def waveform(samples: np.ndarray, *, sample_rate: int, start: int = 0) -> list[list[float]]:
    """Return [min, max] pairs over every channel, one per 1/100 s of the stream.

    Bins sit on the stream's timeline (bin k holds the frames n with
    n * 100 // sample_rate == k), so a chunk starting at frame ``start`` may
    begin and end with part of a bin; its neighbour holds the rest.
    """
    frames = len(samples)
    if frames == 0:
        return []
    bins = waveform_index(np.arange(start, start + frames), sample_rate=sample_rate)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(bins)) + 1])
    lows = np.minimum.reduceat(samples.min(axis=1), starts)
    highs = np.maximum.reduceat(samples.max(axis=1), starts)
    pairs = np.clip(np.stack([lows, highs], axis=1), -1.0, 1.0)
    return np.round(pairs, 4).tolist()


def audiowaveform(
    chunks: Sequence[tuple[int, list[list[float]]]], *, sample_rate: int, bits: int = 8
) -> dict[str, Any]:
    """Return BBC audiowaveform JSON (version 2) from the chunks' waveform pairs.

    chunks holds, per chunk in order, the index of its first bin and its
    [min, max] pairs; a bin split between two chunks is merged back into one.
    """
    firsts = [first + np.arange(len(pairs)) for first, pairs in chunks if pairs]
    if not firsts:
        pairs, bins = np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    else:
        bins = np.concatenate(firsts)
        pairs = np.concatenate(
            [np.asarray(pairs, dtype=np.float64) for _, pairs in chunks if pairs]
        )
    starts = np.flatnonzero(np.diff(bins, prepend=-1))
    lows = np.minimum.reduceat(pairs[:, 0], starts) if len(starts) else pairs[:, 0]
    highs = np.maximum.reduceat(pairs[:, 1], starts) if len(starts) else pairs[:, 1]
    full_scale = (1 << (bits - 1)) - 1
    data = np.rint(np.stack([lows, highs], axis=1) * full_scale).astype(np.int64)
    return {
        "version": 2,
        "channels": 1,
        "sample_rate": sample_rate,
        "samples_per_pixel": round(sample_rate / WAVEFORM_PER_SECOND),
        "bits": bits,
        "length": len(data),
        "data": data.ravel().tolist(),
    }


@functools.lru_cache(maxsize=32)
def _band_edges(sample_rate: int, bands: int) -> np.ndarray:
    return np.geomspace(SPECTRUM_LOW_HZ, sample_rate / 2, bands + 1)


def spectrum(samples: np.ndarray, *, sample_rate: int, bands: int = SPECTRUM_BANDS) -> list[float]:
    """Return the level of ``bands`` log-spaced bands from 20 Hz to Nyquist, in dBFS.

    The channels are averaged; a full-scale sine reads 0 dBFS in its band.
    A band too narrow to hold an FFT bin takes the density of the nearest bin.
    """
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if len(mono) < 16:
        return [SILENCE_DB] * bands
    segment = min(len(mono), _SPECTRUM_SEGMENT)
    freqs, density = signal.welch(mono, fs=sample_rate, nperseg=segment, scaling="density")
    bin_width = freqs[1] - freqs[0]
    edges = _band_edges(sample_rate, bands)
    # Power of each band = integral of the density over it.
    cumulative = np.concatenate([[0.0], np.cumsum(density) * bin_width])
    index = np.searchsorted(freqs, edges)
    power = cumulative[index[1:]] - cumulative[index[:-1]]
    empty = index[1:] == index[:-1]
    if np.any(empty):
        centres = np.sqrt(edges[:-1] * edges[1:])[empty]
        nearest = np.clip(np.rint(centres / bin_width).astype(np.int64), 0, len(density) - 1)
        power[empty] = density[nearest] * (edges[1:] - edges[:-1])[empty]
    # A sine of amplitude A has power A**2 / 2: double it so full scale reads 0 dB.
    return np.round(to_db(2.0 * power, power=True), 2).tolist()


def to_pcm16(samples: np.ndarray) -> bytes:
    """Return interleaved 16-bit little-endian PCM (clipped at full scale, no dither)."""
    scaled = np.rint(np.clip(samples, -1.0, 1.0) * 32767.0)
    return scaled.astype("<i2").tobytes()
