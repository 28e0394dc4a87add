"""Per-chunk analysis sent with every audio_chunk: levels, waveform and spectrum.

All functions take the samples as the only positional argument: float
arrays of shape (frames, channels), full scale at +-1. ``analyse_chunk``
does all of a processed chunk's work at once: the analysis, the summary's
measure and the 16-bit PCM, from one clipped copy of its samples.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.fft
from scipy import signal

from .meter import ChunkMeasure, OutputMeter
from .steps import Block

if TYPE_CHECKING:
    from .pipeline import Stage

SILENCE_DB = -120.0  # the level reported for digital silence (JSON has no -inf)
WAVEFORM_PER_SECOND = 100
SPECTRUM_BANDS = 64
SPECTRUM_LOW_HZ = 20.0
_SPECTRUM_SEGMENT = 4096


def to_db(power_or_amplitude: np.ndarray | float, *, power: bool = False) -> np.ndarray | float:
    """Return a level in dB, SILENCE_DB for zero."""
    factor = 10.0 if power else 20.0
    value = np.maximum(np.asarray(power_or_amplitude, dtype=np.float64), 1e-300)
    return np.maximum(factor * np.log10(value), SILENCE_DB)


def levels(samples: np.ndarray) -> tuple[float, float]:
    """Return (sample peak, RMS) in dBFS over every channel; a full-scale sine has RMS -3 dBFS."""
    if samples.size == 0:
        return SILENCE_DB, SILENCE_DB
    peak, mean_square = _peak_and_mean_square(samples)
    return float(to_db(peak)), float(to_db(mean_square, power=True))


def _peak_and_mean_square(samples: np.ndarray) -> tuple[float, float]:
    """Return the linear sample peak and mean square over every channel (0 for no samples)."""
    if samples.size == 0:
        return 0.0, 0.0
    peak = max(float(np.max(samples)), -float(np.min(samples)))
    flat = samples.reshape(-1)
    return peak, float(np.dot(flat, flat)) / flat.size


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
    first = waveform_index(start, sample_rate=sample_rate)
    last = waveform_index(start + frames - 1, sample_rate=sample_rate)
    # Frame where each bin after the first begins: the first n with n * 100 >= k * rate.
    edges = -(-np.arange(first + 1, last + 1) * sample_rate // WAVEFORM_PER_SECOND) - start
    starts = np.concatenate([[0], edges])
    # Reduce along the frames (fast), then across the few channels.
    lows = np.minimum.reduceat(samples, starts, axis=0).min(axis=1)
    highs = np.maximum.reduceat(samples, starts, axis=0).max(axis=1)
    pairs = np.clip(np.stack([lows, highs], axis=1), -1.0, 1.0)
    rounded: list[list[float]] = np.round(pairs, 4).tolist()
    return rounded


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


@functools.lru_cache(maxsize=8)
def _hann(size: int) -> np.ndarray:
    window = signal.get_window("hann", size).astype(np.float32)
    window.setflags(write=False)
    return window


def spectrum(samples: np.ndarray, *, sample_rate: int, bands: int = SPECTRUM_BANDS) -> list[float]:
    """Return the level of ``bands`` log-spaced bands from 20 Hz to Nyquist, in dBFS.

    The channels are averaged; the power spectral density is the mean over
    Hann-windowed segments of up to 4096 frames that tile the chunk (the last
    one ends at the chunk's end); a full-scale sine reads 0 dBFS in its band.
    A band too narrow to hold an FFT bin takes the density of the nearest bin.
    """
    channels = samples.shape[1] if samples.ndim == 2 else 1
    mono = samples @ np.full(channels, 1 / channels) if samples.ndim == 2 else samples
    frames = len(mono)
    if frames < 16:
        return [SILENCE_DB] * bands
    segment = min(frames, _SPECTRUM_SEGMENT)
    # Whole segments side by side, then one more ending at the chunk's end if they fall short.
    whole, short = divmod(frames, segment)
    pieces = np.empty((whole + (1 if short else 0), segment), dtype=np.float32)
    pieces[:whole] = mono[: whole * segment].reshape(whole, segment)
    if short:
        pieces[whole] = mono[frames - segment :]
    window = _hann(segment)
    pieces *= window
    power = np.mean(np.abs(scipy.fft.rfft(pieces, axis=1)) ** 2, axis=0)
    bins = _spectrum_bins(sample_rate, segment, bands)
    # One-sided density, as Welch's method scales it: power per Hz.
    density = power.astype(np.float64) * 2 / (sample_rate * float(np.dot(window, window)))
    density[0] /= 2
    if segment % 2 == 0:
        density[-1] /= 2
    # Power of each band = integral of the density over it.
    cumulative = np.concatenate([[0.0], np.cumsum(density) * bins.width])
    band_power = cumulative[bins.index[1:]] - cumulative[bins.index[:-1]]
    band_power[bins.empty] = density[bins.nearest] * bins.empty_widths
    # A sine of amplitude A has power A**2 / 2: double it so full scale reads 0 dB.
    levels: list[float] = np.round(to_db(2.0 * band_power, power=True), 2).tolist()
    return levels


@dataclass(frozen=True)
class _Bins:
    """Where each band lies among a segment's FFT bins (the same for every chunk)."""

    width: float  # Hz per bin
    index: np.ndarray  # first bin at or above each band edge
    empty: np.ndarray  # bands that hold no bin
    nearest: np.ndarray  # for those, the bin nearest their centre
    empty_widths: np.ndarray  # and their width in Hz


@functools.lru_cache(maxsize=32)
def _spectrum_bins(sample_rate: int, segment: int, bands: int) -> _Bins:
    width = sample_rate / segment
    freqs = np.arange(segment // 2 + 1) * width
    edges = _band_edges(sample_rate, bands)
    index = np.searchsorted(freqs, edges)
    empty = index[1:] == index[:-1]
    centres = np.sqrt(edges[:-1] * edges[1:])[empty]
    nearest = np.clip(np.rint(centres / width).astype(np.int64), 0, len(freqs) - 1)
    return _Bins(width, index, empty, nearest, (edges[1:] - edges[:-1])[empty])


def to_pcm16(samples: np.ndarray) -> bytes:
    """Return interleaved 16-bit little-endian PCM (clipped at full scale, no dither)."""
    return _pcm16_of_clipped(np.clip(samples, -1.0, 1.0))


def _pcm16_of_clipped(samples: np.ndarray) -> bytes:
    """to_pcm16 of samples already within full scale."""
    scaled = np.multiply(samples, 32767.0)
    pcm: bytes = np.rint(scaled, out=scaled).astype("<i2").tobytes()
    return pcm


@dataclass(frozen=True)
class ChunkAnalysis:
    """Everything made from one processed chunk: what its audio_chunk says, and its result."""

    peak_db: float  # rounded to 0.01, as sent
    rms_db: float
    waveform: list[list[float]]
    spectrum: list[float]
    waveform_first: int  # the stream's waveform bin of waveform[0]
    frames: int
    measure: ChunkMeasure  # its share of the output's summary
    pcm: bytes  # 16-bit little-endian, interleaved


def analyse_chunk(block: Block, *, meter: OutputMeter, stage: Stage) -> ChunkAnalysis:
    """Analyse and measure a chunk of the last stage's output, and make its 16-bit PCM.

    The block (with the pre-roll the meter needs) is clipped at full scale once,
    as the result holds it; levels, waveform, spectrum, the summary's measure
    and the PCM all read that one copy. Where the stage's output loudness is
    known already (Stage.known_loudness), it is not measured again.
    """
    rate = block.sample_rate
    block = block.with_samples(np.clip(block.samples, -1.0, 1.0))
    samples = block.body
    peak, mean_square = _peak_and_mean_square(samples)
    empty = samples.size == 0
    peak_db = SILENCE_DB if empty else float(to_db(peak))
    rms_db = SILENCE_DB if empty else float(to_db(mean_square, power=True))
    return ChunkAnalysis(
        peak_db=round(peak_db, 2),
        rms_db=round(rms_db, 2),
        waveform=waveform(samples, sample_rate=rate, start=block.body_start),
        spectrum=spectrum(samples, sample_rate=rate),
        waveform_first=waveform_index(block.body_start, sample_rate=rate),
        frames=len(samples),
        measure=meter.measure(block, sample_peak=peak, known_loudness=stage.known_loudness()),
        pcm=_pcm16_of_clipped(samples),
    )
