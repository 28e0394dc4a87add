"""fade_in and fade_out: linear gain ramps at the start and the end of the stream.

A fade depends on where a sample sits in the stream: fade_in only on its
index, so every chunk can be faded on its own; fade_out also on the length
of the stream, known once all of it has gone by, so it is a global step
whose measurement is just the number of frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Block, GlobalStep, Param, Step

_SECONDS = Param(name="seconds", default=1.0, min=0.0, max=600.0, unit="s",
                 description="length of the fade")  # fmt: skip


def _ramp(block: Block, gains: np.ndarray) -> Block:
    return block.with_samples(block.samples * gains[:, np.newaxis])


class FadeIn(Step):
    name = "fade_in"
    cost_ns = 30.0
    description = (
        "Fades in from silence over the first seconds (a linear ramp, 0 at the first frame)."
    )
    kind = "position-dependent"
    params = (_SECONDS,)
    example = "fade_in=seconds=2"

    def process(self, block: Block) -> Block:
        length = self.options["seconds"] * block.sample_rate
        if length <= 0 or block.start >= length:
            return block
        positions = np.arange(block.start, block.start + len(block.samples))
        return _ramp(block, np.clip(positions / length, 0.0, 1.0))


class FadeOut(GlobalStep):
    name = "fade_out"
    cost_ns = 30.0
    description = "Fades out to silence over the last seconds (a linear ramp, 0 at the last frame)."
    kind = "position-dependent"
    params = (_SECONDS,)
    example = "fade_out=seconds=3"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.total_frames: int | None = None

    def measure(self, block: Block) -> int:
        return len(block.body)

    def reduce(self, measurements: Sequence[int]) -> None:
        self.total_frames = int(sum(measurements))

    def process(self, block: Block) -> Block:
        length = self.options["seconds"] * block.sample_rate
        assert self.total_frames is not None, "process() runs after reduce()"
        fade_from = self.total_frames - length
        if length <= 0 or block.start + len(block.samples) <= fade_from:
            return block
        positions = np.arange(block.start, block.start + len(block.samples))
        return _ramp(block, np.clip((self.total_frames - 1 - positions) / length, 0.0, 1.0))

    def report(self) -> dict[str, Any]:
        return {"step": self.name, "total_frames": self.total_frames}
