"""Per-chunk analysis sent with every audio_chunk: levels, waveform and spectrum.

All functions take the samples as the only positional argument: float
arrays of shape (frames, channels), full scale at +-1.
"""

from __future__ import annotations

import functools

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


def waveform(samples: np.ndarray, *, sample_rate: int) -> list[list[float]]:
    """Return [min, max] pairs over every channel, one per 1/100 s (the last one may be shorter)."""
    frames = len(samples)
    if frames == 0:
        return []
    per_pair = sample_rate / WAVEFORM_PER_SECOND
    starts = np.unique(np.floor(np.arange(0, frames, per_pair)).astype(np.int64))
    lows = np.minimum.reduceat(samples.min(axis=1), starts)
    highs = np.maximum.reduceat(samples.max(axis=1), starts)
    pairs = np.clip(np.stack([lows, highs], axis=1), -1.0, 1.0)
    return np.round(pairs, 4).tolist()


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
