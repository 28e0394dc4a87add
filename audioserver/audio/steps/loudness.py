"""loudness: one gain for the whole file to reach an integrated loudness (ITU-R BS.1770-4).

Every chunk's K-weighted 100 ms sub-block energies are measured in parallel
(see audio/loudness.py); the reduction sums them into the file's integrated
loudness, then picks the gain, lowered when the sample peak would pass
max_peak. The report says when that happened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import loudness
from .base import Block, GlobalStep, Param, db_to_gain


@dataclass(frozen=True)
class _Measure:
    energies: loudness.Energies
    peak: float
    frames: int


_ROUNDING = 2.0**-20  # far above float32's relative rounding (2**-24) and the spool's


class Loudness(GlobalStep):
    name = "loudness"
    cost_ns = 70.0  # measuring (K-weighting, 100 ms energies), then a gain
    description = (
        "Loudness normalisation: one gain so the file's integrated loudness (ITU-R BS.1770-4) "
        "reaches target, lowered if needed to keep the sample peak at or under max_peak."
    )
    params = (
        Param(name="target", default=-14.0, min=-70.0, max=-5.0, unit="LUFS",
              description="integrated loudness to reach"),
        Param(name="max_peak", default=-1.0, min=-60.0, max=0.0, unit="dBFS",
              description="highest sample peak the gain may produce"),
    )  # fmt: skip
    example = "loudness=target=-16:max_peak=-1"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.measured: float | None = None
        self.peak = 0.0
        self.gain_db = 0.0
        self.limited = False
        self._output_sub_blocks: np.ndarray | None = None

    def measure_pre_roll(self) -> int:
        assert self.sample_rate is not None, "measure_pre_roll() runs after bind()"
        return loudness.pre_roll(self.sample_rate)

    def measure(self, block: Block) -> _Measure:
        body = block.body
        energies = loudness.chunk_energies(
            block.samples, sample_rate=block.sample_rate, start=block.body_start, pre=block.pre
        )
        return _Measure(energies, float(np.max(np.abs(body))) if body.size else 0.0, len(body))

    def reduce(self, measurements: Sequence[_Measure]) -> None:
        assert self.sample_rate is not None, "reduce() runs after bind()"
        sub_blocks = loudness.combine(
            [m.energies for m in measurements],
            sample_rate=self.sample_rate,
            total_frames=sum(m.frames for m in measurements),
        )
        self.measured = loudness.integrated_loudness(sub_blocks)
        self.peak = max((m.peak for m in measurements), default=0.0)
        self._choose_gain()
        gain = db_to_gain(self.gain_db)
        # A gain scales every sub-block's energy by gain**2, as long as nothing clips at
        # full scale (the output's samples, float32 from the spool, may lie a rounding
        # above the peak measured here: the margin covers it).
        fits = self.peak * gain * (1 + _ROUNDING) <= 1.0
        self._output_sub_blocks = sub_blocks * gain**2 if fits else None

    def _choose_gain(self) -> None:
        if self.measured is None:  # silence, or shorter than one 400 ms block: leave it
            self.gain_db, self.limited = 0.0, False
            return
        self.gain_db = self.options["target"] - self.measured
        if self.peak > 0:
            headroom = self.options["max_peak"] - 20 * math.log10(self.peak)
            self.limited = self.gain_db > headroom
            self.gain_db = min(self.gain_db, headroom)

    def output_loudness(self) -> np.ndarray | None:
        return self._output_sub_blocks

    def process(self, block: Block) -> Block:
        return block.with_samples(block.samples * db_to_gain(self.gain_db))

    def report(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "measured_lufs": None if self.measured is None else round(self.measured, 2),
            "target_lufs": self.options["target"],
            "gain_db": round(self.gain_db, 2),
            "limited_by_peak": self.limited,
            "measured_peak_db": round(20 * math.log10(self.peak), 2) if self.peak else None,
        }
