"""normalize: one gain for the whole file so that its sample peak hits a target."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Block, GlobalStep, Param, db_to_gain

logger = logging.getLogger(__name__)


class Normalize(GlobalStep):
    name = "normalize"
    cost_ns = 10.0  # measuring the peak, then a gain
    description = "Peak normalisation: one gain so that the file's sample peak reaches peak_db."
    params = (Param(name="peak_db", default=-1.0, min=-60.0, max=0.0, unit="dBFS",
                    description="sample peak the file is brought to"),)  # fmt: skip
    example = "normalize=peak_db=-1"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.peak: float | None = None
        self.gain = 1.0

    def measure(self, block: Block) -> float:
        body = block.body
        return float(np.max(np.abs(body))) if body.size else 0.0

    def reduce(self, measurements: Sequence[float]) -> None:
        self.peak = max(measurements, default=0.0)
        # Silence stays silence: there is no gain that brings zero to a peak.
        self.gain = db_to_gain(self.options["peak_db"]) / self.peak if self.peak > 0 else 1.0

    def process(self, block: Block) -> Block:
        return block.with_samples(block.samples * self.gain)

    def report(self) -> dict[str, Any]:
        peak_db = round(20 * math.log10(self.peak), 2) if self.peak else None
        gain_db = round(20 * math.log10(self.gain), 2)
        return {"step": self.name, "measured_peak_db": peak_db, "gain_db": gain_db}
