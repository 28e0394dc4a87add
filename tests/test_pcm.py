"""pydub segments and float samples: every sample width, headroom, rounding and clipping."""

from __future__ import annotations

import numpy as np
import pytest

from audioserver.audio.pcm import (
    AudioSegment,
    Quantizer,
    full_scale,
    headroom_for,
    to_float,
    to_segment,
)

DTYPES = {1: "i1", 2: "<i2", 4: "<i4"}


def segment_of(values: list[list[int]], width: int) -> AudioSegment:
    pcm = np.array(values, dtype=DTYPES[width])
    return AudioSegment(
        data=pcm.tobytes(), sample_width=width, frame_rate=8000, channels=pcm.shape[1]
    )


@pytest.mark.parametrize("width", [1, 2, 4])
def test_to_float_puts_full_scale_at_one_for_every_width(width):
    top = 2 ** (8 * width - 1)
    samples = to_float(segment_of([[top - 1, -top], [top // 2, 0]], width))
    assert samples.dtype == np.float64 and samples.shape == (2, 2)
    assert samples.tolist() == [[(top - 1) / top, -1.0], [0.5, 0.0]]


def test_headroom_scales_by_a_power_of_two():
    segment = segment_of([[2**27, -(2**31)], [2**30, 1]], 4)
    samples = to_float(segment, headroom_bits=4)
    assert samples.tolist() == [[1.0, -16.0], [8.0, 2.0**-27]]  # +24 dBFS fits
    assert full_scale(4, 4) == 2**27


def test_to_float_returns_a_copy_of_its_own():
    segment = segment_of([[1, 2], [3, 4]], 2)
    samples = to_float(segment)
    assert samples.flags.owndata and samples.flags.writeable
    samples[0, 0] = 0.75  # the copy is the caller's; the segment is untouched
    assert segment.raw_data == np.array([[1, 2], [3, 4]], dtype="<i2").tobytes()


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_segment_rounds_and_clips_to_the_integer_range(width, dtype):
    top = 2 ** (8 * width - 1)
    samples = np.array([[0.5, -0.5], [1.5, -1.5], [1.0, -1.0], [0.3 / top, -0.7 / top]], dtype)
    segment = to_segment(samples, sample_rate=8000, sample_width=width)
    assert (segment.sample_width, segment.frame_rate, segment.channels) == (width, 8000, 2)
    pcm = np.frombuffer(segment.raw_data, dtype=DTYPES[width]).reshape(-1, 2)
    high = top - 1
    if dtype is np.float32 and width == 4:
        high = 2**31 - 128  # the largest float32 under 2**31
    assert pcm.tolist() == [[top // 2, -top // 2], [high, -top], [high, -top], [0, -1]]


def test_to_segment_and_back_is_exact_with_headroom():
    x = np.random.default_rng(0).normal(0.0, 3.0, size=(1000, 2)).astype(np.float32)
    headroom = headroom_for(float(np.max(np.abs(x))))
    back = to_float(to_segment(x, sample_rate=8000, headroom_bits=headroom), headroom_bits=headroom)
    # Overs are kept; what is lost is below 2**-32 of 2**headroom.
    np.testing.assert_allclose(back, x, rtol=0, atol=2.0 ** (headroom - 32))


@pytest.mark.parametrize(
    ("peak", "bits"),
    [(0.0, 0), (0.999, 0), (1.0, 1), (1.5, 1), (2.0, 2), (15.9, 4), (1000.0, 10), (2**-10, -9)],
)
def test_headroom_for_is_the_smallest_that_holds_the_peak(peak, bits):
    assert headroom_for(peak) == bits
    assert peak < 2.0**bits


@pytest.mark.parametrize("peak", [float("nan"), float("inf")])
def test_headroom_for_refuses_what_is_not_a_number(peak):
    with pytest.raises(ValueError, match="not finite"):
        headroom_for(peak)


def test_a_width_pydub_does_not_store_is_refused():
    with pytest.raises(ValueError, match="1, 2 or 4"):
        to_segment(np.zeros((4, 1)), sample_rate=8000, sample_width=3)


def test_a_quantizer_reuses_its_arrays_and_never_a_returned_segment():
    rng = np.random.default_rng(1)
    quantize = Quantizer(sample_rate=8000, headroom_bits=2)
    chunks = [rng.normal(0.0, 1.0, size=(frames, 2)) for frames in (500, 1200, 30, 1200)]
    chunks[2] = chunks[2].astype(np.float32)  # a change of float type on the way
    segments = [quantize(chunk) for chunk in chunks]
    for chunk, segment in zip(chunks, segments, strict=True):
        expected = to_segment(chunk, sample_rate=8000, headroom_bits=2)
        assert segment.raw_data == expected.raw_data
        assert segment.frame_count() == len(chunk) and segment.channels == 2
