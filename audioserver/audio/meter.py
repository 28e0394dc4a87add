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

    # The chunk's K-weighted energies, or the whole output's sub-block mean squares when
    # they were known before it was made (Stage.known_loudness): the same array in every
    # chunk of the stream.
    energies: loudness.Energies | np.ndarray
    true_peak: float
    sample_peak: float
    frames: int


class OutputMeter:
    """Measures output chunks (with pre-roll) and sums them up.

    True peak is the costly part: a chunk whose sample peak, times the most an
    interpolated sample can exceed its inputs, stays under the highest value
    already measured cannot hold the file's true peak, so it is not
    interpolated (nor, in any chunk, the frames that cannot reach it). The
    file's true peak is the same; only which chunks and frames were measured
    depends on the order workers finished in.
    """

    def __init__(self, *, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._gain = loudness.true_peak_gain(sample_rate)
        # The largest peak measured so far: a lower bound of the file's true peak.
        # Threads may race on it; a stale value only makes the shortcut rarer.
        self._floor = 0.0

    @staticmethod
    def pre_roll(sample_rate: int) -> int:
        """Frames of pre-roll a chunk needs for exact loudness and true peak."""
        return max(loudness.pre_roll(sample_rate), loudness.true_peak_pre_roll(sample_rate))

    def measure(
        self,
        block: Block,
        *,
        sample_peak: float | None = None,
        known_loudness: np.ndarray | None = None,
    ) -> ChunkMeasure:
        """Measure one chunk: block.body, with block.pre frames of the output before it.

        sample_peak is the body's, if the caller has it; known_loudness the whole
        output's sub-block mean squares, if they are known already (then the
        chunk's K-weighted energies are not measured).
        """
        body = block.body
        if sample_peak is None:
            sample_peak = max(float(np.max(body)), -float(np.min(body))) if body.size else 0.0
        floor = self._floor
        if sample_peak * self._gain < floor:
            true_peak = sample_peak  # below the file's true peak whatever it is exactly
        else:
            true_peak = loudness.true_peak(
                block.samples, sample_rate=self.sample_rate, pre=block.pre, last=block.final,
                sample_peak=sample_peak, floor=floor,
            )  # fmt: skip
        self._floor = max(self._floor, true_peak)
        if known_loudness is None:
            energies: loudness.Energies | np.ndarray = loudness.chunk_energies(
                block.samples, sample_rate=self.sample_rate, start=block.body_start, pre=block.pre
            )
        else:
            energies = known_loudness
        return ChunkMeasure(energies, true_peak, sample_peak, len(body))

    def summary(self, measures: Sequence[ChunkMeasure]) -> dict[str, Any]:
        """Return integrated loudness, true and sample peak, loudness range and duration."""
        frames = sum(measure.frames for measure in measures)
        sub_blocks = self._sub_blocks(measures, frames)
        integrated = loudness.integrated_loudness(sub_blocks)
        lra = loudness.loudness_range(sub_blocks)
        return {
            "integrated_lufs": _finite(integrated),
            "true_peak_db": _db(max((m.true_peak for m in measures), default=0.0)),
            "sample_peak_db": _db(max((m.sample_peak for m in measures), default=0.0)),
            "loudness_range_lu": _finite(lra),
            "duration": frames / self.sample_rate,
        }

    def _sub_blocks(self, measures: Sequence[ChunkMeasure], frames: int) -> np.ndarray:
        """The mean squares of the complete sub-blocks of the chunks' frames."""
        known = [m.energies for m in measures if isinstance(m.energies, np.ndarray)]
        if known:
            assert len(known) == len(measures), "a stream's loudness is known for all or none"
            return loudness.complete_prefix(
                known[0], sample_rate=self.sample_rate, total_frames=frames
            )
        return loudness.combine(
            [m.energies for m in measures if isinstance(m.energies, loudness.Energies)],
            sample_rate=self.sample_rate,
            total_frames=frames,
        )


def _finite(value: float | None) -> float | None:
    """Round a figure to 0.01; None where it does not exist (JSON has no NaN or infinity)."""
    return round(value, 2) if value is not None and math.isfinite(value) else None
