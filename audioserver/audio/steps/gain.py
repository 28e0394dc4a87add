"""gain: a fixed change of level."""

from __future__ import annotations

from .base import Block, Param, Step, db_to_gain


class Gain(Step):
    name = "gain"
    cost_ns = 6.0
    description = "Changes the level by a fixed number of decibels."
    params = (Param(name="db", default=0.0, min=-60.0, max=40.0, unit="dB",
                    description="level change; positive is louder"),)  # fmt: skip
    example = "gain=db=-3"

    def process(self, block: Block) -> Block:
        return block.with_samples(block.samples * db_to_gain(self.options["db"]))
