"""The summary of a task's output, measured chunk by chunk as the chunks are produced.

Each chunk is measured in the worker that made it (K-weighted energies of
its 100 ms sub-blocks, its true peak, its sample peak); the summary reduces
the measurements of all chunks in order, so it equals a measurement of the
whole output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import loudness
from .steps import Block


def _db(value: float | None, digits: int = 2) -> float | None:
    if value is None or value <= 0:
        return None
    return round(20 * math.log10(value), digits)


@dataclass(frozen=True)
class ChunkMeasure:
    """One output chunk's contribution to the summary."""

    energies: loudness.Energies
    true_peak: float
    sample_peak: float
    frames: int


class OutputMeter:
    """Measures output chunks (with pre-roll) and sums them up.

    True peak is the costly part: a chunk whose sample peak, times the most an
    interpolated sample can exceed its inputs, stays under a sample peak
    already seen cannot hold the file's true peak, so it is not interpolated.
    The file's true peak is the same; only which chunks were measured depends
    on the order workers finished in.
    """

    def __init__(self, *, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._gain = loudness.true_peak_gain(sample_rate)
        # The largest sample peak measured so far: a lower bound of the file's true peak.
        # Threads may race on it; a stale value only makes the shortcut rarer.
        self._floor = 0.0

    @staticmethod
    def pre_roll(sample_rate: int) -> int:
        """Frames of pre-roll a chunk needs for exact loudness and true peak."""
        return max(loudness.pre_roll(sample_rate), loudness.true_peak_pre_roll(sample_rate))

    def measure(self, block: Block) -> ChunkMeasure:
        """Measure one chunk: block.body, with block.pre frames of the output before it."""
        body = block.body
        sample_peak = max(float(np.max(body)), -float(np.min(body))) if body.size else 0.0
        self._floor = max(self._floor, sample_peak)
        if sample_peak * self._gain < self._floor:
            true_peak = sample_peak  # below the file's true peak whatever it is exactly
        else:
            true_peak = loudness.true_peak(
                block.samples, sample_rate=self.sample_rate, pre=block.pre, last=block.final,
                sample_peak=sample_peak,
            )  # fmt: skip
        return ChunkMeasure(
            energies=loudness.chunk_energies(
                block.samples, sample_rate=self.sample_rate, start=block.body_start, pre=block.pre
            ),
            true_peak=true_peak,
            sample_peak=sample_peak,
            frames=len(body),
        )

    def summary(self, measures: Sequence[ChunkMeasure]) -> dict[str, Any]:
        """Return integrated loudness, true and sample peak, loudness range and duration."""
        frames = sum(measure.frames for measure in measures)
        sub_blocks = loudness.combine(
            [measure.energies for measure in measures],
            sample_rate=self.sample_rate,
            total_frames=frames,
        )
        integrated = loudness.integrated_loudness(sub_blocks)
        lra = loudness.loudness_range(sub_blocks)
        return {
            "integrated_lufs": _finite(integrated),
            "true_peak_db": _db(max((m.true_peak for m in measures), default=0.0)),
            "sample_peak_db": _db(max((m.sample_peak for m in measures), default=0.0)),
            "loudness_range_lu": _finite(lra),
            "duration": frames / self.sample_rate,
        }


def _finite(value: float | None) -> float | None:
    """Round a figure to 0.01; None where it does not exist (JSON has no NaN or infinity)."""
    return round(value, 2) if value is not None and math.isfinite(value) else None
