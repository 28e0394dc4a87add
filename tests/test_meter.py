"""The output meter: chunk by chunk, it sums up to a measurement of the whole output."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import music

from audioserver.audio import loudness
from audioserver.audio.meter import OutputMeter
from audioserver.audio.pipeline import Pipeline
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


def measure_output(
    pipeline: str, x: np.ndarray, size: int, *, known: bool, emitted: int | None = None
) -> dict:
    """Run a pipeline of one global step by chunks; measure its output with the meter.

    known: let the meter take the output's loudness from the global step's measure.
    emitted: sum up only that many first chunks (a stopped task's).
    """
    first, last = Pipeline.parse(pipeline).plan(RATE, 2, output_pre_roll=OutputMeter.pre_roll)
    assert first.boundary is not None
    first.boundary.reduce([first.boundary.measure(Block(x, RATE, 0, final=True))])
    output = last.run(Block(x, RATE, 0, final=True)).samples
    meter = OutputMeter(sample_rate=RATE)
    pre_roll = OutputMeter.pre_roll(RATE)
    measures = []
    for start in range(0, len(output), size):
        begin, stop = max(0, start - pre_roll), min(start + size, len(output))
        block = Block(output[begin:stop], RATE, begin, start - begin, 0, stop == len(output))
        block = block.with_samples(np.clip(block.samples, -1.0, 1.0))
        measures.append(
            meter.measure(block, known_loudness=last.known_loudness() if known else None)
        )
    summary = meter.summary(measures[:emitted])
    return summary | {"known": last.known_loudness() is not None}


@pytest.mark.parametrize("emitted", [None, 7])  # every chunk, or a stopped task's first 7
def test_the_loudness_a_final_gain_gives_is_the_loudness_measured(emitted):
    # Loud then quiet, so that the relative gates and the loudness range have work to do;
    # chunks of 0.45 s, so that a stop falls inside a 100 ms sub-block.
    x = music(12.0, rate=RATE) * np.where(np.arange(12 * RATE) < 4 * RATE, 0.5, 0.02)[:, None]
    size = RATE * 45 // 100
    known = measure_output("loudness=target=-16", x, size, known=True, emitted=emitted)
    measured = measure_output("loudness=target=-16", x, size, known=False, emitted=emitted)
    assert known.pop("known") is True and measured.pop("known") is True
    assert known == measured
    if emitted is None:
        assert known["integrated_lufs"] == pytest.approx(-16.0, abs=0.01)
    else:
        assert known["duration"] == pytest.approx(7 * 0.45)


def test_a_gain_that_reaches_full_scale_has_its_output_measured():
    # A loud target with max_peak at 0 dBFS: the gain puts the sample peak at full scale,
    # where the 16-bit clip could change the picture, so the loudness is measured again.
    x = music(3.0, rate=RATE) * 0.5
    (first, last) = Pipeline.parse("loudness=target=-5:max_peak=0").plan(RATE, 2)
    assert first.boundary is not None
    first.boundary.reduce([first.boundary.measure(Block(x, RATE, 0, final=True))])
    assert first.boundary.report()["limited_by_peak"] is True
    assert last.known_loudness() is None
    # Below full scale, the same step knows its output's loudness.
    (first, last) = Pipeline.parse("loudness=target=-30").plan(RATE, 2)
    assert first.boundary is not None
    first.boundary.reduce([first.boundary.measure(Block(x, RATE, 0, final=True))])
    assert last.known_loudness() is not None


def test_only_a_stage_that_is_a_lone_gain_knows_its_loudness():
    x = music(3.0, rate=RATE) * 0.5
    stages = Pipeline.parse("loudness=target=-30,highpass=freq=80").plan(RATE, 2)
    assert stages[0].boundary is not None
    stages[0].boundary.reduce([stages[0].boundary.measure(Block(x, RATE, 0, final=True))])
    assert stages[-1].known_loudness() is None  # the high-pass changes the loudness
    normalize = Pipeline.parse("normalize").plan(RATE, 2)
    assert normalize[0].boundary is not None
    normalize[0].boundary.reduce([normalize[0].boundary.measure(Block(x, RATE, 0, final=True))])
    assert normalize[-1].known_loudness() is None  # normalize measures no loudness
