"""Cutting a stream into chunks, each a pydub segment with the pre-roll and look-ahead it needs.

Stage 0 reads from the decoder (or, for ``process_segment``, from a segment
in memory); later stages read the previous stage's output back from a
``Spool``, a float32 file written by chunk position. A chunk's segment holds
its block, ``[pre-roll | body | look-ahead]``: the pre-roll is the audio
just before the body (up to ``pre_roll`` frames, less at the start of the
stream), the look-ahead the audio just after it (up to ``post_roll`` frames,
less at the end). Bodies tile the stream without overlap. Chunks are cut by
frame, never by pydub's milliseconds, so the tiling is exact.

A chunk's segment is ordinary pydub integer PCM; its samples are the audio
scaled by ``2 ** -headroom_bits`` (``pcm``): 4 for the decoder's, whatever
fits a spool's peak for a spool's. ``Chunk.block`` turns it into the float64
``Block`` the steps work on, in one multiplication: the one copy of a
chunk's samples on its way to the steps.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode import Decoder
from .pcm import AudioSegment, Quantizer, headroom_for, to_float
from .steps import Block


@dataclass(frozen=True)
class Chunk:
    """One chunk of a stage's input: its index, and its block as a pydub segment."""

    index: int
    segment: AudioSegment  # the whole block: pre-roll, body, look-ahead
    start: int  # index, in the stream, of the segment's first frame
    pre: int = 0  # leading frames that are pre-roll
    post: int = 0  # trailing frames that are look-ahead
    final: bool = False  # the body ends where the stream ends
    headroom_bits: int = 0  # the segment holds the audio scaled by 2**-headroom_bits

    @property
    def body_frames(self) -> int:
        """Frames of the chunk's own audio, without pre-roll and look-ahead."""
        frames: int = len(self.segment.raw_data) // self.segment.frame_width
        return frames - self.pre - self.post

    def block(self) -> Block:
        """Return the block the steps work on: the segment's samples as float64 (one copy)."""
        samples = to_float(self.segment, headroom_bits=self.headroom_bits)
        return Block(samples, self.segment.frame_rate, self.start, self.pre, self.post, self.final)


def decoded_chunks(
    decoder: Decoder, *, chunk_frames: int, pre_roll: int = 0, post_roll: int = 0
) -> Iterator[Chunk]:
    """Yield the decoded stream in chunks of chunk_frames (the last may be shorter).

    Each chunk's segment is built from the bytes read off ffmpeg's pipe, as
    they arrive: the whole file is never in memory.
    """
    rate, channels, width = decoder.info.sample_rate, decoder.info.channels, decoder.frame_bytes
    body_bytes, ahead_bytes = chunk_frames * width, post_roll * width
    history: bytes = b""  # the last pre_roll frames before the next body
    pending: bytes | memoryview = b""  # decoded, not yet in a body
    ended = False
    start = 0
    for index in itertools.count():
        # Read one frame past the look-ahead at least, to know whether this chunk is the last.
        while not ended and len(pending) < body_bytes + max(ahead_bytes, width):
            more = decoder.read(chunk_frames).raw_data
            ended = len(more) < body_bytes
            pending = b"".join((pending, more)) if len(pending) else more
        view = memoryview(pending)
        body, ahead = view[:body_bytes], view[body_bytes : body_bytes + ahead_bytes]
        if len(body) == 0:
            return
        final = ended and len(pending) <= body_bytes
        data = b"".join((history, body, ahead))
        segment = AudioSegment(data=data, sample_width=4, frame_rate=rate, channels=channels)
        pre, post = len(history) // width, len(ahead) // width
        yield Chunk(index, segment, start - pre, pre, post, final, decoder.headroom_bits)
        if pre_roll:
            end = len(data) - len(ahead)
            history = data[max(0, end - pre_roll * width) : end]
        pending = view[body_bytes:]
        start += len(body) // width
        if final:
            return


def _tiles(
    total: int, chunk_frames: int, pre_roll: int, post_roll: int
) -> Iterator[tuple[int, int, int, int]]:
    """Yield (first, start, stop, last) per chunk: block [first, last), body [start, stop)."""
    for start in range(0, total, chunk_frames):
        stop = min(start + chunk_frames, total)
        yield max(0, start - pre_roll), start, stop, min(total, stop + post_roll)


def segment_chunks(
    segment: AudioSegment,
    *,
    chunk_frames: int,
    pre_roll: int = 0,
    post_roll: int = 0,
    headroom_bits: int = 0,
) -> Iterator[Chunk]:
    """Yield a segment in memory in chunks of chunk_frames, cut by frame with pydub."""
    total = int(segment.frame_count())
    tiles = _tiles(total, chunk_frames, pre_roll, post_roll)
    for index, (first, start, stop, last) in enumerate(tiles):
        block = segment.get_sample_slice(first, last)
        yield Chunk(index, block, first, start - first, last - stop, stop == total, headroom_bits)


class Spool:
    """Float32 frames of one stage's output, written by position and read back by range.

    Float32 keeps whatever level a stage produces (a gain of +40 dB, say);
    the spool's peak decides the headroom of the segments read back from it.
    """

    def __init__(self, path: Path, *, channels: int, sample_rate: int) -> None:
        self.path = Path(path)
        self.channels = channels
        self.sample_rate = sample_rate
        self.frames = 0
        self.peak = 0.0  # the largest absolute sample written
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def write(self, start: int, samples: np.ndarray) -> None:
        """Write frames starting at frame index start (safe from several threads at once)."""
        data = np.ascontiguousarray(samples, dtype="<f4")
        peak = max(float(np.max(data)), -float(np.min(data))) if data.size else 0.0
        os.pwrite(self._fd, data.data, start * self.channels * 4)  # the array's memory: no copy
        with self._lock:
            self.frames = max(self.frames, start + len(samples))
            self.peak = max(self.peak, peak)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Return frames [start, stop) as float32 of shape (n, channels)."""
        size = (stop - start) * self.channels * 4
        data = os.pread(self._fd, size, start * self.channels * 4)
        return np.frombuffer(data, dtype="<f4").reshape(-1, self.channels)

    @property
    def headroom_bits(self) -> int:
        """Headroom of the segments read back: the smallest that holds the peak without clipping."""
        return headroom_for(self.peak)

    def close(self) -> None:
        """Close and delete the file (again: nothing)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        self.path.unlink(missing_ok=True)


def spooled_chunks(
    spool: Spool, *, chunk_frames: int, pre_roll: int = 0, post_roll: int = 0
) -> Iterator[Chunk]:
    """Yield a spool's frames in chunks of chunk_frames, as 32-bit segments.

    Start it once every chunk of the stage is written: the segments' headroom
    comes from the spool's peak.
    """
    total, headroom = spool.frames, spool.headroom_bits
    quantize = Quantizer(sample_rate=spool.sample_rate, headroom_bits=headroom)
    tiles = _tiles(total, chunk_frames, pre_roll, post_roll)
    for index, (first, start, stop, last) in enumerate(tiles):
        segment = quantize(spool.read(first, last))
        yield Chunk(index, segment, first, start - first, last - stop, stop == total, headroom)
