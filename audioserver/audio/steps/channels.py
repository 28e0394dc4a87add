"""mono: mix every channel down to one."""

from __future__ import annotations

from dataclasses import replace

from .base import Block, Step


class Mono(Step):
    name = "mono"
    cost_ns = 35.0
    description = "Mixes all channels into one (their average, so a full-scale signal stays so)."
    example = "mono"

    def output_channels(self, channels: int) -> int:
        return 1

    def process(self, block: Block) -> Block:
        return replace(block, samples=block.samples.mean(axis=1, keepdims=True))
