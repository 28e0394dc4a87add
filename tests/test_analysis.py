"""The per-chunk analysis: levels, waveform pairs, spectrum bands, 16-bit conversion."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import noise, sine

from audioserver.audio import analysis
from audioserver.audio.meter import OutputMeter
from audioserver.audio.pipeline import Pipeline
from audioserver.audio.steps import Block

RATE = 44100


def test_levels_of_a_full_scale_sine():
    peak_db, rms_db = analysis.levels(sine(1.0, amplitude=1.0))
    assert peak_db == pytest.approx(0.0, abs=0.01)
    assert rms_db == pytest.approx(-3.01, abs=0.01)


def test_levels_of_silence_are_the_floor_not_minus_infinity():
    assert analysis.levels(np.zeros((100, 2))) == (analysis.SILENCE_DB, analysis.SILENCE_DB)
    assert analysis.levels(np.zeros((0, 2))) == (analysis.SILENCE_DB, analysis.SILENCE_DB)


def test_waveform_has_100_min_max_pairs_per_second():
    x = sine(2.0, rate=RATE, freq=50, amplitude=0.8)
    pairs = analysis.waveform(x, sample_rate=RATE)
    assert len(pairs) == 200
    lows, highs = np.array(pairs).T
    assert np.all(lows <= highs)
    assert max(highs) == pytest.approx(0.8, abs=1e-3) and min(lows) == pytest.approx(-0.8, abs=1e-3)
    # Each pair covers its own 10 ms: compare with a direct computation.
    np.testing.assert_allclose(pairs[7], [x[3087:3528].min(), x[3087:3528].max()], atol=1e-4)


def test_waveform_of_a_chunk_not_a_multiple_of_10_ms():
    assert len(analysis.waveform(np.zeros((1000, 1)), sample_rate=RATE)) == 3  # 441+441+118


@pytest.mark.parametrize("freq", [100.0, 1000.0, 10000.0])
def test_spectrum_puts_a_full_scale_sine_at_0_dbfs_in_its_band(freq):
    bands = analysis.spectrum(sine(1.0, rate=RATE, freq=freq, amplitude=1.0), sample_rate=RATE)
    assert len(bands) == analysis.SPECTRUM_BANDS
    edges = np.geomspace(20, RATE / 2, analysis.SPECTRUM_BANDS + 1)
    band = int(np.searchsorted(edges, freq)) - 1
    # The sine's power may straddle two neighbouring bands; together they hold it all.
    assert 10 * np.log10(sum(10 ** (b / 10) for b in bands[band - 1 : band + 2])) == pytest.approx(
        0.0, abs=0.5
    )
    assert max(bands) == bands[band] or max(bands) in bands[band - 1 : band + 2]
    far = [b for i, b in enumerate(bands) if abs(i - band) > 6]
    assert max(far) < -50


def test_spectrum_of_white_noise_rises_with_band_width():
    bands = analysis.spectrum(noise(2.0, rate=RATE, channels=1), sample_rate=RATE)
    # Log-spaced bands get wider with frequency, so white noise reads higher up there.
    assert np.mean(bands[-10:]) > np.mean(bands[5:15]) + 10
    assert all(b > analysis.SILENCE_DB for b in bands)  # no empty bands even at 20 Hz


def test_spectrum_of_silence_and_of_a_tiny_chunk():
    assert analysis.spectrum(np.zeros((4410, 2)), sample_rate=RATE) == [analysis.SILENCE_DB] * 64
    assert len(analysis.spectrum(np.zeros((3, 2)), sample_rate=RATE)) == 64


def test_to_pcm16_rounds_and_clips():
    x = np.array([[0.0, 1.0], [-1.0, 2.0], [0.5, -3.0], [1 / 32767, -0.4 / 32767]])
    pcm = np.frombuffer(analysis.to_pcm16(x), dtype="<i2")
    assert pcm.tolist() == [0, 32767, -32767, 32767, 16384, -32767, 1, 0]


@pytest.mark.parametrize("pipeline", ["gain=db=12", "loudness=target=-16"])
def test_analyse_chunk_gives_what_each_analysis_gives_of_the_clipped_chunk(pipeline):
    # gain=db=12 drives the chunk over full scale: everything reads the clipped samples.
    x = noise(3.0, rate=RATE, amplitude=0.4)
    stages = Pipeline.parse(pipeline).plan(RATE, 2, output_pre_roll=OutputMeter.pre_roll)
    if stages[0].boundary is not None:
        stages[0].boundary.reduce([stages[0].boundary.measure(Block(x, RATE, 0, final=True))])
    output = stages[-1].run(Block(x, RATE, 0, final=True)).samples
    pre, start = OutputMeter.pre_roll(RATE), RATE
    block = Block(output[start - pre : 2 * RATE + 77], RATE, start - pre, pre)
    chunk = analysis.analyse_chunk(block, meter=OutputMeter(sample_rate=RATE), stage=stages[-1])
    clipped = np.clip(block.samples, -1.0, 1.0)
    body = clipped[pre:]
    peak_db, rms_db = analysis.levels(body)
    assert (chunk.peak_db, chunk.rms_db) == (round(peak_db, 2), round(rms_db, 2))
    assert chunk.waveform == analysis.waveform(body, sample_rate=RATE, start=start)
    assert chunk.waveform_first == analysis.waveform_index(start, sample_rate=RATE)
    assert chunk.spectrum == analysis.spectrum(body, sample_rate=RATE)
    assert chunk.pcm == analysis.to_pcm16(output[start : 2 * RATE + 77])
    assert chunk.frames == len(body)
    measure = OutputMeter(sample_rate=RATE).measure(block.with_samples(clipped))
    assert chunk.measure.sample_peak == measure.sample_peak
    assert chunk.measure.true_peak == measure.true_peak
    if stages[-1].known_loudness() is None:
        assert np.array_equal(chunk.measure.energies.sums, measure.energies.sums)
    else:  # the loudness step's measure stands for the chunk's energies
        assert chunk.measure.energies is stages[-1].known_loudness()
