"""pydub segments and the steps' float samples: integer PCM with headroom, and back.

A pydub ``AudioSegment`` holds interleaved little-endian signed integer PCM
of ``sample_width`` 1, 2 or 4 bytes. The steps work on float64 arrays of
shape (frames, channels) with full scale at 1.0. Between the two stands the
segment's headroom: with ``headroom_bits`` = k, full scale is
``2 ** (8 * sample_width - 1 - k)``, so samples up to ``2 ** k`` times full
scale (6.02 k dB above it) fit. An ordinary segment has k = 0. The
decoder's segments are 32-bit with k = 4: full scale is 2**27, overs up to
+24 dBFS survive, and the resolution (2**-27 of full scale, -162 dBFS) is
finer than anything the output keeps.

Converting a segment to float is one multiplication by a power of two, so it
is exact (integers below 2**53), and it is the one copy of a chunk's
samples before the steps; ``to_segment`` is the way back.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

with warnings.catch_warnings():
    # pydub imports audioop (deprecated on 3.11 and 3.12) and has old regex escapes;
    # it warns that ffmpeg is not on PATH, which configure_pydub settles.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    warnings.simplefilter("ignore", RuntimeWarning)
    from pydub import AudioSegment

__all__ = ["AudioSegment", "Quantizer", "headroom_for", "to_float", "to_segment"]

_DTYPES: dict[int, np.dtype] = {1: np.dtype("i1"), 2: np.dtype("<i2"), 4: np.dtype("<i4")}


def _dtype(sample_width: int) -> np.dtype:
    try:
        return _DTYPES[sample_width]
    except KeyError:
        raise ValueError(
            f"sample_width must be 1, 2 or 4 bytes (pydub's integer PCM), got {sample_width!r}"
        ) from None


def full_scale(sample_width: int, headroom_bits: int = 0) -> float:
    """Return the integer sample value that stands for 1.0 at this width and headroom."""
    return 2.0 ** (8 * sample_width - 1 - headroom_bits)


def to_float(segment: AudioSegment, *, headroom_bits: int = 0) -> np.ndarray:
    """Return a segment's samples as float64 of shape (frames, channels), full scale at 1.0.

    The integers are read in place (a view of ``raw_data``); the float array is
    the only copy.
    """
    dtype = _dtype(segment.sample_width)
    pcm = np.frombuffer(segment.raw_data, dtype=dtype).reshape(-1, segment.channels)
    return pcm * (1.0 / full_scale(segment.sample_width, headroom_bits))


def to_segment(
    samples: np.ndarray, *, sample_rate: int, sample_width: int = 4, headroom_bits: int = 0
) -> AudioSegment:
    """Return float samples of shape (frames, channels) as a segment of integer PCM.

    Samples are rounded to the nearest integer and clipped to the integer
    range: with headroom_bits = k, at 2**k times full scale.
    """
    quantizer = Quantizer(
        sample_rate=sample_rate, sample_width=sample_width, headroom_bits=headroom_bits
    )
    return quantizer(samples)


class Quantizer:
    """Turns float samples into segments of one width and headroom, as ``to_segment`` does.

    It keeps its working arrays from one call to the next, so converting a
    stream of chunks allocates only each segment's bytes (fresh arrays of a
    few MB per chunk cost more in page faults than in arithmetic). One
    thread at a time.
    """

    def __init__(self, *, sample_rate: int, sample_width: int = 4, headroom_bits: int = 0) -> None:
        self.sample_rate = sample_rate
        self.sample_width = sample_width
        self._dtype = _dtype(sample_width)
        self._scale = full_scale(sample_width, headroom_bits)
        self._work = np.empty(0, dtype=np.float32)
        self._pcm = np.empty(0, dtype=self._dtype)

    def __call__(self, samples: np.ndarray) -> AudioSegment:
        # float32 stays so (a power of 2 scales it exactly); anything else works in float64.
        kind = np.result_type(samples.dtype, np.float32)
        if self._work.dtype != kind or self._work.size < samples.size:
            self._work = np.empty(samples.size, dtype=kind)
            self._pcm = np.empty(samples.size, dtype=self._dtype)
        work = self._work[: samples.size].reshape(samples.shape)
        pcm = self._pcm[: samples.size].reshape(samples.shape)
        np.multiply(samples, self._scale, out=work)
        np.rint(work, out=work)
        info = np.iinfo(self._dtype)
        top = kind.type(info.max)
        if float(top) > info.max:  # float32 rounds 2**31 - 1 up: clip at the float below
            top = np.nextafter(top, kind.type(0))
        np.clip(work, info.min, top, out=work)
        np.copyto(pcm, work, casting="unsafe")  # whole numbers within range: exact
        return AudioSegment(
            data=pcm.tobytes(),
            sample_width=self.sample_width,
            frame_rate=self.sample_rate,
            channels=samples.shape[1],
        )


def headroom_for(peak: float) -> int:
    """Return the headroom in bits that fits a sample peak with full 32-bit resolution below it.

    The smallest k with peak < 2**k (negative for quiet audio, which then
    keeps its resolution too); 0 for silence.
    """
    if not math.isfinite(peak):
        raise ValueError(f"the audio holds a sample that is not finite ({peak})")
    if peak <= 0.0:
        return 0
    return math.frexp(peak)[1]  # peak = m * 2**e with 0.5 <= m < 1
