"""biquads: scipy's sosfilt to the bit, a stereo pair filtered as one complex signal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from audioserver.audio import biquads, loudness

RATE = 44100


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize(
    "sos",
    [
        signal.butter(2, 80, btype="highpass", fs=RATE, output="sos"),
        signal.butter(8, [300, 3400], btype="bandpass", fs=RATE, output="sos"),
        loudness.k_weighting_sos(RATE),
    ],
    ids=["highpass", "bandpass order 8", "K-weighting"],
)
def test_sosfilt_is_scipys_to_the_bit(channels, sos):
    x = np.random.default_rng(channels).normal(0, 0.3, (5000, channels))
    assert np.array_equal(biquads.sosfilt(sos, x), signal.sosfilt(sos, x, axis=0))
    # A view that is not C-ordered (a channel pair taken from wider audio) gives the same.
    wide = np.random.default_rng(9).normal(0, 0.3, (5000, channels + 1))
    view = wide[:, 1:]
    assert np.array_equal(biquads.sosfilt(sos, view), signal.sosfilt(sos, view, axis=0))


def test_k_weighted_power_is_the_weighted_sum_of_the_filtered_squares():
    sos = loudness.k_weighting_sos(RATE)
    x = np.random.default_rng(3).normal(0, 0.3, (8000, 6))
    weights = loudness.channel_weights(6)
    expected = np.square(signal.sosfilt(sos, x, axis=0)[1000:]) @ weights
    power = biquads.k_weighted_power(sos, x, weights=weights, skip=1000)
    np.testing.assert_allclose(power, expected, rtol=1e-13)
    stereo = x[:, :2]  # the complex path
    expected = np.square(signal.sosfilt(sos, stereo, axis=0)[1000:]) @ [1.0, 1.0]
    assert np.array_equal(
        biquads.k_weighted_power(sos, stereo, weights=np.ones(2), skip=1000), expected
    )
    assert len(biquads.k_weighted_power(sos, x[:10], weights=weights, skip=50)) == 0
