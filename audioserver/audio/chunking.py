"""Cutting a stream into chunks, each with the pre-roll its stage needs.

Stage 0 reads from the decoder; later stages read the previous stage's
output back from a ``Spool``, a float32 file written by chunk position.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode import Decoder
from .steps import Block


@dataclass(frozen=True)
class Chunk:
    """One chunk of a stage's input: its index and its block (pre-roll first)."""

    index: int
    block: Block


def decoded_chunks(decoder: Decoder, *, chunk_frames: int, pre_roll: int) -> Iterator[Chunk]:
    """Yield the decoded stream in chunks of chunk_frames (the last may be shorter)."""
    rate = decoder.info.sample_rate
    history = np.zeros((0, decoder.info.channels), dtype=np.float32)
    start = 0
    index = 0
    while True:
        body = decoder.read(chunk_frames)
        if len(body) == 0:
            return
        samples = np.concatenate([history, body]) if len(history) else body
        yield Chunk(index, Block(samples, rate, start - len(history), len(history)))
        if pre_roll:
            history = samples[-pre_roll:]
        start += len(body)
        index += 1
        if len(body) < chunk_frames:
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


def spooled_chunks(spool: Spool, *, chunk_frames: int, pre_roll: int) -> Iterator[Chunk]:
    """Yield a spool's frames in chunks of chunk_frames, each with up to pre_roll frames before."""
    for index, start in enumerate(range(0, spool.frames, chunk_frames)):
        first = max(0, start - pre_roll)
        samples = spool.read(first, min(start + chunk_frames, spool.frames))
        yield Chunk(index, Block(samples, spool.sample_rate, first, start - first))
