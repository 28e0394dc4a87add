"""Chunks are pydub segments cut by frame: from ffmpeg's pipe, from memory, from a spool."""

from __future__ import annotations

import functools
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import Recorder, music, to_int16, write_wav

from audioserver.audio.chunking import (
    Chunk,
    Spool,
    decoded_chunks,
    segment_chunks,
    spooled_chunks,
)
from audioserver.audio.decode import Decoder
from audioserver.audio.pcm import AudioSegment
from audioserver.audio.pipeline import Pipeline
from audioserver.task import FairQueue
from audioserver.tasks import TaskEngine, TaskOptions

RATE = 8000


@pytest.fixture
def signal() -> np.ndarray:
    return music(3.3, rate=RATE, seed=5)


def as_read(x: np.ndarray) -> np.ndarray:
    """What x written as 16-bit PCM reads back as."""
    return to_int16(x) / 32768.0


def sixteen_bit(samples: np.ndarray) -> AudioSegment:
    return AudioSegment(
        data=to_int16(samples).tobytes(), sample_width=2, frame_rate=RATE, channels=2
    )


def check_tiling(chunks: list[Chunk], x: np.ndarray, *, chunk_frames, pre_roll, post_roll):
    """Each chunk holds exactly [pre-roll | body | look-ahead] of x, and the bodies tile x."""
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert len(chunks) == -(-len(x) // chunk_frames)
    for number, chunk in enumerate(chunks):
        assert isinstance(chunk.segment, AudioSegment)
        body_start = number * chunk_frames
        body_stop = min(body_start + chunk_frames, len(x))
        assert chunk.pre == min(pre_roll, body_start)
        assert chunk.post == min(post_roll, len(x) - body_stop)
        assert chunk.final == (number == len(chunks) - 1)
        block = chunk.block()
        assert block.start == body_start - chunk.pre
        assert block.sample_rate == RATE
        np.testing.assert_array_equal(block.samples, x[block.start : body_stop + chunk.post])
        np.testing.assert_array_equal(block.body, x[body_start:body_stop])


@pytest.mark.parametrize(
    ("chunk_frames", "pre_roll", "post_roll"),
    [(8000, 0, 0), (1000, 2500, 0), (777, 0, 300), (3000, 1234, 5678), (30_000, 100, 100)],
)
def test_decoded_chunks_are_segments_that_tile_the_stream(
    ffmpeg, tmp_path, signal, chunk_frames, pre_roll, post_roll
):
    path = write_wav(tmp_path / "a.wav", signal, RATE)
    with Decoder(path, ffmpeg=ffmpeg) as decoder:
        chunks = list(
            decoded_chunks(
                decoder, chunk_frames=chunk_frames, pre_roll=pre_roll, post_roll=post_roll
            )
        )
    for chunk in chunks:
        assert chunk.segment.sample_width == 4 and chunk.headroom_bits == 4
        assert chunk.segment.frame_count() == chunk.pre + len(chunk.block().body) + chunk.post
    check_tiling(
        chunks, as_read(signal), chunk_frames=chunk_frames, pre_roll=pre_roll, post_roll=post_roll
    )


def test_a_stream_of_whole_chunks_ends_with_a_final_one(ffmpeg, tmp_path, signal):
    x = signal[:4000]
    with Decoder(write_wav(tmp_path / "a.wav", x, RATE), ffmpeg=ffmpeg) as decoder:
        chunks = list(decoded_chunks(decoder, chunk_frames=1000))
    assert [(chunk.segment.frame_count(), chunk.final) for chunk in chunks] == [
        (1000, False), (1000, False), (1000, False), (1000, True)
    ]  # fmt: skip


@pytest.mark.parametrize(("chunk_frames", "pre_roll", "post_roll"), [(1000, 2500, 300)])
def test_segment_chunks_cut_a_segment_in_memory_by_frame(signal, chunk_frames, pre_roll, post_roll):
    chunks = list(
        segment_chunks(
            sixteen_bit(signal), chunk_frames=chunk_frames, pre_roll=pre_roll, post_roll=post_roll
        )
    )
    # 1000 frames at 8 kHz is 125 ms: milliseconds would do here, frames do everywhere.
    assert all(chunk.segment.sample_width == 2 for chunk in chunks)
    check_tiling(
        chunks, as_read(signal), chunk_frames=chunk_frames, pre_roll=pre_roll, post_roll=post_roll
    )


def test_chunks_at_rates_that_milliseconds_cannot_cut(ffmpeg, tmp_path):
    rate = 44100  # 441 frames is exactly 10 ms, 1001 frames is not a whole number of ms
    x = music(0.5, rate=rate)
    segment = AudioSegment(data=to_int16(x).tobytes(), sample_width=2, frame_rate=rate, channels=2)
    chunks = list(segment_chunks(segment, chunk_frames=1001, pre_roll=13))
    bodies = np.concatenate([chunk.block().body for chunk in chunks])
    np.testing.assert_array_equal(bodies, as_read(x))


def test_a_spool_keeps_any_level_and_reads_back_as_32_bit_segments(tmp_path):
    x = np.random.default_rng(3).normal(0.0, 0.1, size=(5000, 2))
    x[1234] = [700.0, -0.0001]  # +57 dBFS: far beyond the decoder's headroom
    spool = Spool(tmp_path / "s.f32", channels=2, sample_rate=RATE)
    with ThreadPoolExecutor(4) as pool:  # written out of order, from several threads
        list(
            pool.map(lambda start: spool.write(start, x[start : start + 500]), range(0, 5000, 500))
        )
    assert spool.frames == 5000
    assert spool.peak == pytest.approx(700.0)
    assert spool.headroom_bits == 10
    chunks = list(spooled_chunks(spool, chunk_frames=1200, pre_roll=100, post_roll=50))
    stored = x.astype(np.float32)
    for chunk in chunks:
        assert chunk.segment.sample_width == 4 and chunk.headroom_bits == 10
    body = np.concatenate([chunk.block().body for chunk in chunks])
    np.testing.assert_allclose(body, stored, rtol=0, atol=2.0 ** (10 - 32))
    assert body[1234, 0] == 700.0
    spool.close()
    assert not spool.path.exists()


def test_a_quiet_spool_keeps_its_resolution(tmp_path):
    x = np.random.default_rng(4).normal(0.0, 1e-5, size=(2000, 1))  # around -100 dBFS
    spool = Spool(tmp_path / "q.f32", channels=1, sample_rate=RATE)
    spool.write(0, x)
    assert spool.headroom_bits < -10
    (chunk,) = spooled_chunks(spool, chunk_frames=2000)
    back = chunk.block().samples
    np.testing.assert_allclose(back, x.astype(np.float32), rtol=0, atol=2.0**-42)
    spool.close()


class RecordingQueue(FairQueue):
    """The engine's real queue of jobs for its pool, keeping every chunk put in it."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[Chunk] = []

    def put(self, key: str, job: functools.partial) -> None:  # type: ignore[override]
        self.chunks.extend(arg for arg in job.args if isinstance(arg, Chunk))
        super().put(key, job)


def test_the_engine_hands_pydub_segments_to_its_pool(tmp_path, ffmpeg, signal):
    engine = TaskEngine(data_dir=tmp_path / "data", ffmpeg=ffmpeg, workers=2)
    engine.runner.fair = pool = RecordingQueue()  # what the pool's workers take their jobs from
    recorder = Recorder()
    engine.publisher = recorder
    sid = recorder.connect("client")
    upload = tmp_path / "upload.wav"
    shutil.copy(write_wav(tmp_path / "a.wav", signal, RATE), upload)
    spec = "highpass=freq=80,loudness=target=-20,lowpass=freq=3000"  # two stages, a spool
    options = TaskOptions(pipeline=Pipeline.parse(spec), chunk_seconds=0.5)
    try:
        task = engine.create(upload, filename="a.wav", options=options, subscriber=sid)
        event, data = recorder.wait_end(sid, task.id)
        assert event == "processing_complete", data
    finally:
        engine.shutdown()
    per_stage = -(-len(signal) // 4000)
    assert len(pool.chunks) == 2 * per_stage
    assert all(isinstance(chunk.segment, AudioSegment) for chunk in pool.chunks)
    decoded, spooled = pool.chunks[:per_stage], pool.chunks[per_stage:]
    assert {(c.segment.sample_width, c.headroom_bits) for c in decoded} == {(4, 4)}
    assert {c.segment.sample_width for c in spooled} == {4}
    # What the first stage was given is the upload, sample for sample.
    bodies = np.concatenate([chunk.block().body for chunk in decoded])
    np.testing.assert_array_equal(bodies, as_read(signal))
    assert [chunk.start + chunk.pre for chunk in spooled] == list(range(0, len(signal), 4000))
