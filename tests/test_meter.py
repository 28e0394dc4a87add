"""The output meter: chunk by chunk, it sums up to a measurement of the whole output."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import music

from audioserver.audio import loudness
from audioserver.audio.meter import OutputMeter
from audioserver.audio.steps import Block

RATE = 44100


def measure_chunked(x: np.ndarray, size: int, order: list[int]) -> dict:
    meter = OutputMeter(sample_rate=RATE)
    pre_roll = OutputMeter.pre_roll(RATE)
    starts = list(range(0, len(x), size))
    measures = {}
    for index in order:  # workers finish chunks in any order
        start = starts[index]
        first, stop = max(0, start - pre_roll), min(start + size, len(x))
        block = Block(x[first:stop], RATE, first, start - first, 0, stop == len(x))
        measures[index] = meter.measure(block)
    return meter.summary([measures[index] for index in range(len(starts))])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_is_the_same_whatever_order_chunks_finish_in(seed):
    # Loud, then much quieter: the quiet chunks may skip true-peak interpolation.
    x = music(6.0, rate=RATE) * np.where(np.arange(6 * RATE) < 2 * RATE, 0.9, 0.05)[:, None]
    size = RATE // 2
    chunks = -(-len(x) // size)
    order = list(np.random.default_rng(seed).permutation(chunks))
    chunked = measure_chunked(x, size, order)
    whole = measure_chunked(x, len(x), [0])
    assert chunked == whole
    peak = loudness.true_peak(x, sample_rate=RATE, pre=0, last=True)
    assert chunked["true_peak_db"] == round(20 * np.log10(peak), 2)
