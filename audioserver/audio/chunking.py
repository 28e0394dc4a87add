"""Cutting a stream into chunks, each with the pre-roll and look-ahead its stage needs.

Stage 0 reads from the decoder; later stages read the previous stage's
output back from a ``Spool``, a float32 file written by chunk position.
A chunk's block is ``[pre-roll | body | look-ahead]``: the pre-roll is the
audio just before the body (up to ``pre_roll`` frames, less at the start of
the stream), the look-ahead the audio just after it (up to ``post_roll``
frames, less at the end). Bodies tile the stream without overlap.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode import Decoder
from .steps import Block


@dataclass(frozen=True)
class Chunk:
    """One chunk of a stage's input: its index and its block."""

    index: int
    block: Block


def decoded_chunks(
    decoder: Decoder, *, chunk_frames: int, pre_roll: int = 0, post_roll: int = 0
) -> Iterator[Chunk]:
    """Yield the decoded stream in chunks of chunk_frames (the last may be shorter)."""
    rate, channels = decoder.info.sample_rate, decoder.info.channels
    history = np.zeros((0, channels), dtype=np.float32)
    pending = np.zeros((0, channels), dtype=np.float32)
    ended = False
    start = 0
    for index in itertools.count():
        # Read one frame past the look-ahead at least, to know whether this chunk is the last.
        while not ended and len(pending) < chunk_frames + max(post_roll, 1):
            more = decoder.read(chunk_frames)
            ended = len(more) < chunk_frames
            pending = np.concatenate([pending, more]) if len(pending) else more
        body, ahead = pending[:chunk_frames], pending[chunk_frames : chunk_frames + post_roll]
        if len(body) == 0:
            return
        final = ended and len(pending) <= chunk_frames
        samples = np.concatenate([history, body, ahead]) if len(history) or len(ahead) else body
        pre, post = len(history), len(ahead)
        yield Chunk(index, Block(samples, rate, start - pre, pre, post, final))
        if pre_roll:
            history = samples[max(0, pre + len(body) - pre_roll) : len(samples) - post]
        pending = pending[chunk_frames:]
        start += len(body)
        if final:
            return


class Spool:
    """Float32 frames of one stage's output, written by position and read back by range."""

    def __init__(self, path: Path, *, channels: int, sample_rate: int) -> None:
        self.path = Path(path)
        self.channels = channels
        self.sample_rate = sample_rate
        self.frames = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def write(self, start: int, samples: np.ndarray) -> None:
        """Write frames starting at frame index start (safe from several threads at once)."""
        data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
        os.pwrite(self._fd, data, start * self.channels * 4)
        self.frames = max(self.frames, start + len(samples))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Return frames [start, stop) as float32 of shape (n, channels)."""
        size = (stop - start) * self.channels * 4
        data = os.pread(self._fd, size, start * self.channels * 4)
        return np.frombuffer(data, dtype="<f4").reshape(-1, self.channels)

    def close(self) -> None:
        """Close and delete the file."""
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


def spooled_chunks(
    spool: Spool, *, chunk_frames: int, pre_roll: int = 0, post_roll: int = 0
) -> Iterator[Chunk]:
    """Yield a spool's frames in chunks of chunk_frames, with pre-roll and look-ahead."""
    total = spool.frames
    for index, start in enumerate(range(0, total, chunk_frames)):
        stop = min(start + chunk_frames, total)
        first, last = max(0, start - pre_roll), min(total, stop + post_roll)
        samples = spool.read(first, last)
        block = Block(samples, spool.sample_rate, first, start - first, last - stop, stop == total)
        yield Chunk(index, block)
