"""Dynamics: compressor (feed-forward, hard knee, linked channels).

The compressor follows Giannoulis, Massberg and Reiss (2012), with the gain
smoothed in the log domain:

1. level: per frame, the largest |x| over the channels, in dBFS;
2. static gain computer (hard knee): above the threshold T the output level
   is T + (L - T) / R, so the gain reduction is gr = min(0, (T - L)(1 - 1/R));
3. smoothing (attack when the reduction grows, release when it shrinks):
   y[n] = a y[n-1] + (1 - a) gr[n], a = a_att if gr[n] < y[n-1] else a_rel,
   a = exp(-1 / (time * sample rate)), y = 0 dB at the start of the stream;
4. output: x * 10 ** ((y + makeup) / 20), the same gain on every channel.

Steps 1, 2 and 4 are vectorised numpy; step 3 is a branching recursion, run by
a small numba kernel (compiled without the GIL, so workers run in parallel).
numba is slow to import: it is imported when a compressor is first bound.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from .base import Block, Param, Step

# Level of digital silence, so that log10 never sees 0 (no warning, no -inf).
SILENCE_DB = -200.0
# The smoother's state is never further than this from any other trajectory's
# (a bound on the gain reduction: 100 dB covers a -60 dBFS threshold with
# input up to +40 dBFS).
MAX_REDUCTION_DB = 100.0
# A chunk's pre-roll makes the smoothed gain reduction agree with whole-signal
# processing within this: a relative error of 1e-5 * ln(10) / 20 = 1.2e-6 on
# each output sample, far under the 1e-4 seam budget.
SETTLE_DB = 1e-5


def _smooth(gr: np.ndarray, a_attack: float, a_release: float) -> np.ndarray:
    """Attack/release smoothing of a gain reduction in dB, from y = 0 (compiled by numba)."""
    out = np.empty_like(gr)
    y = 0.0
    for n in range(gr.shape[0]):
        target = gr[n]
        a = a_attack if target < y else a_release
        y = a * y + (1.0 - a) * target
        out[n] = y
    return out


@functools.cache
def _smoother() -> Callable[[np.ndarray, float, float], np.ndarray]:
    """Return _smooth compiled by numba (imported here, on first use: it is slow to import)."""
    import numba

    signature = "float64[::1](float64[::1], float64, float64)"
    return numba.njit(signature, cache=True, nogil=True)(_smooth)


def _coefficient(time_ms: float, sample_rate: int) -> float:
    return math.exp(-1.0 / (time_ms / 1000.0 * sample_rate))


class Compressor(Step):
    name = "compressor"
    cost_ns = 150.0
    description = (
        "Feed-forward compressor (hard knee, channels linked): reduces the level above "
        "threshold_db by ratio, with attack and release smoothing."
    )
    kind = "stateful"
    params = (
        Param(name="threshold_db", default=-20.0, min=-60.0, max=0.0, unit="dBFS",
              description="level above which the gain is reduced"),
        Param(name="ratio", default=4.0, min=1.0, max=20.0,
              description="input dB above the threshold for each output dB above it"),
        Param(name="attack_ms", default=10.0, min=0.1, max=500.0, unit="ms",
              description="time constant of the gain reduction as it grows"),
        Param(name="release_ms", default=100.0, min=1.0, max=2000.0, unit="ms",
              description="time constant of the gain reduction as it shrinks"),
        Param(name="makeup_db", default=0.0, min=-20.0, max=40.0, unit="dB",
              description="gain applied after the compression"),
    )  # fmt: skip
    example = "compressor=threshold_db=-18:ratio=3"

    def bind(self, sample_rate: int, channels: int) -> None:
        super().bind(sample_rate, channels)
        self._smooth = _smoother()
        self._a_attack = _coefficient(self.options["attack_ms"], sample_rate)
        self._a_release = _coefficient(self.options["release_ms"], sample_rate)
        # Pre-roll: the smoother's update y -> a(y) y + (1 - a(y)) gr is continuous
        # (both branches give gr at y = gr) and piecewise linear with slopes a_att
        # and a_rel, so two trajectories fed the same gr get closer by at least a
        # factor a = max(a_att, a_rel) each frame. Starting at most MAX_REDUCTION_DB
        # apart (the chunk's smoother starts from 0 dB where the whole-signal one
        # may be anywhere in [-100, 0]), after N frames they differ by at most
        # MAX_REDUCTION_DB * a**N <= SETTLE_DB when
        #   N >= ln(MAX_REDUCTION_DB / SETTLE_DB) / -ln(a)
        #     = ln(1e7) * slowest time (s) * sample rate   (about 16.1 time constants).
        # Level detection and gain computer are memoryless: they need no pre-roll.
        slowest_s = max(self.options["attack_ms"], self.options["release_ms"]) / 1000.0
        self._pre_roll = math.ceil(math.log(MAX_REDUCTION_DB / SETTLE_DB) * slowest_s * sample_rate)

    def pre_roll(self) -> int:
        return self._pre_roll

    def process(self, block: Block) -> Block:
        x = block.samples
        if x.shape[0] == 0 or x.shape[1] == 0:
            return block.with_samples(x.copy())
        peak = np.max(np.abs(x), axis=1)
        level_db = 20.0 * np.log10(np.maximum(peak, 10.0 ** (SILENCE_DB / 20.0)))
        threshold, ratio = self.options["threshold_db"], self.options["ratio"]
        reduction_db = np.minimum(0.0, (threshold - level_db) * (1.0 - 1.0 / ratio))
        smoothed_db = self._smooth(
            np.ascontiguousarray(reduction_db), self._a_attack, self._a_release
        )
        gain = 10.0 ** ((smoothed_db + self.options["makeup_db"]) / 20.0)
        return block.with_samples(x * gain[:, np.newaxis])
