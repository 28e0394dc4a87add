"""Butterworth filters: highpass, lowpass (and the shared settling-time computation)."""

from __future__ import annotations

import functools
from typing import ClassVar, Literal

import numpy as np
from scipy import signal

from .. import biquads
from .base import Block, Param, Step

# A chunk's pre-roll is long enough that the filter's response to audio before
# it has decayed below this (for full-scale input): far under the 1e-4 seam budget.
SETTLE_TOLERANCE = 1e-7
_MAX_SETTLE_FRAMES = 1 << 24


@functools.lru_cache(maxsize=64)
def _settle_frames_cached(sos_bytes: bytes, sections: int, tolerance: float) -> int:
    sos = np.frombuffer(sos_bytes).reshape(sections, 6).copy()
    length = 4096
    while True:
        impulse = np.zeros(length)
        impulse[0] = 1.0
        tail = np.cumsum(np.abs(signal.sosfilt(sos, impulse))[::-1])[::-1]
        settled = np.flatnonzero(tail < tolerance)
        # Trust the answer only if the response was followed well past that point.
        if (settled.size and settled[0] < length // 2) or length >= _MAX_SETTLE_FRAMES:
            return int(settled[0]) if settled.size else length
        length *= 4


def settle_frames(sos: np.ndarray, tolerance: float = SETTLE_TOLERANCE) -> int:
    """Return after how many frames the filter's remaining sum of |impulse response| < tolerance."""
    sos = np.ascontiguousarray(sos, dtype=np.float64)
    return _settle_frames_cached(sos.tobytes(), len(sos), tolerance)


_ORDER = Param(name="order", type=int, default=2, min=1, max=8,
               description="filter order; each order adds 6 dB per octave")  # fmt: skip


class _Butterworth(Step):
    """A Butterworth filter, run as second-order sections."""

    kind = "stateful"
    btype: ClassVar[Literal["highpass", "lowpass", "bandpass"]]

    def cutoff(self) -> float | list[float]:
        return self.options["freq"]

    def cost(self, sample_rate: int) -> float:
        return 20.0 + 3.0 * self.options["order"] * (2 if self.name == "bandpass" else 1)

    def bind(self, sample_rate: int, channels: int) -> None:
        super().bind(sample_rate, channels)
        order = int(self.options["order"])  # an int parameter: already an int
        self.sos = signal.butter(
            order, self.cutoff(), btype=self.btype, fs=sample_rate, output="sos"
        )
        self._pre_roll = settle_frames(self.sos)

    def pre_roll(self) -> int:
        return self._pre_roll

    def process(self, block: Block) -> Block:
        return block.with_samples(biquads.sosfilt(self.sos, block.samples))


def _frequency(description: str) -> Param:
    return Param(name="freq", min=10.0, max=94080.0, max_rate_fraction=0.49, unit="Hz",
                 description=description)  # fmt: skip


class Highpass(_Butterworth):
    name = "highpass"
    description = "Butterworth high-pass filter: removes rumble and DC below freq."
    btype = "highpass"
    params = (_frequency("cut-off frequency (-3 dB)"), _ORDER)
    example = "highpass=freq=80:order=4"


class Lowpass(_Butterworth):
    name = "lowpass"
    description = "Butterworth low-pass filter: removes content above freq."
    btype = "lowpass"
    params = (_frequency("cut-off frequency (-3 dB)"), _ORDER)
    example = "lowpass=freq=8000"


class Bandpass(_Butterworth):
    name = "bandpass"
    description = "Butterworth band-pass filter: keeps low..high (each edge has the given order)."
    btype = "bandpass"
    params = (
        Param(name="low", min=10.0, max=94080.0, max_rate_fraction=0.49, unit="Hz",
              description="lower cut-off frequency (-3 dB)"),
        Param(name="high", min=10.0, max=94080.0, max_rate_fraction=0.49, unit="Hz",
              description="upper cut-off frequency (-3 dB)"),
        _ORDER,
    )  # fmt: skip
    example = "bandpass=low=300:high=3400"

    def check(self) -> None:
        if self.options["low"] >= self.options["high"]:
            raise self.params[0].error(
                self.name, f"must be below high ({self.options['high']:g} Hz), got "
                f"{self.options['low']:g}"
            )  # fmt: skip

    def cutoff(self) -> list[float]:
        return [self.options["low"], self.options["high"]]
