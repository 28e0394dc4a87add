"""Second-order sections run over frames-first samples, all channels in one pass (numba).

scipy's ``sosfilt`` filters one channel after another; each output sample
waits for the one before it, so the processor does little at a time. These
kernels advance every channel at each frame: the channels' recursions are
independent and overlap, which makes stereo about twice as fast. The
arithmetic is scipy's, operation for operation (transposed direct form II,
no reordering, no fused multiply-add), so the results are the same to the
bit. ``k_weighted_power`` also squares and weights the channels as it goes
(BS.1770's sum_c G_c y_c**2), without keeping the filtered samples.

numba is slow to import: ``load`` imports it and compiles (or loads from its
cache) the kernels, once per process; ``Pipeline.plan`` calls it, so a
server pays for it while answering its first upload, not in a chunk.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


def _sosfilt(sos: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Filter samples (frames, channels) with sos (sections, 6), from a zero state."""
    frames, channels = samples.shape
    sections = sos.shape[0]
    state = np.zeros((sections, 2, channels))
    out = np.empty_like(samples)
    for n in range(frames):
        for c in range(channels):
            value = samples[n, c]
            for s in range(sections):
                new = sos[s, 0] * value + state[s, 0, c]
                state[s, 0, c] = sos[s, 1] * value - sos[s, 4] * new + state[s, 1, c]
                state[s, 1, c] = sos[s, 2] * value - sos[s, 5] * new
                value = new
            out[n, c] = value
    return out


def _k_weighted_power(
    sos: np.ndarray, samples: np.ndarray, weights: np.ndarray, skip: int
) -> np.ndarray:
    """sum_c weights[c] * filtered[n, c]**2 for the frames after the first skip."""
    frames, channels = samples.shape
    sections = sos.shape[0]
    state = np.zeros((sections, 2, channels))
    power = np.zeros(max(frames - skip, 0))
    for n in range(frames):
        total = 0.0
        for c in range(channels):
            value = samples[n, c]
            for s in range(sections):
                new = sos[s, 0] * value + state[s, 0, c]
                state[s, 0, c] = sos[s, 1] * value - sos[s, 4] * new + state[s, 1, c]
                state[s, 1, c] = sos[s, 2] * value - sos[s, 5] * new
                value = new
            total += weights[c] * (value * value)
        if n >= skip:
            power[n - skip] = total
    return power


class Kernels(NamedTuple):
    sosfilt: Callable[[np.ndarray, np.ndarray], np.ndarray]
    k_weighted_power: Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


@functools.cache
def load() -> Kernels:
    """Return the compiled kernels (numba imported, and the kernels compiled, on first call)."""
    import numba

    jit = functools.partial(numba.njit, cache=True, nogil=True)
    return Kernels(
        jit("float64[:, ::1](float64[:, ::1], float64[:, ::1])")(_sosfilt),
        jit("float64[::1](float64[:, ::1], float64[:, ::1], float64[::1], int64)")(
            _k_weighted_power
        ),
    )


def sosfilt(sos: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Return samples (frames, channels) filtered along the frames, as scipy's sosfilt(axis=0)."""
    return load().sosfilt(_c_float64(sos), _c_float64(samples))


def k_weighted_power(
    sos: np.ndarray, samples: np.ndarray, *, weights: np.ndarray, skip: int = 0
) -> np.ndarray:
    """Return sum_c weights[c] * y[n, c]**2 of samples filtered by sos, frames after skip on.

    The same values as ``np.square(sosfilt(sos, samples, axis=0)[skip:]) @ weights``
    up to the order of the channels' sum.
    """
    return load().k_weighted_power(
        _c_float64(sos), _c_float64(samples), _c_float64(weights), int(skip)
    )


def _c_float64(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float64)
