"""A task's folder on disk, and the store of the chunks it has emitted.

Each task owns ``<DATA_DIR>/<task_id>/``::

    upload          the uploaded file (deleted when the task ends)
    spool-<k>.f32   output of intermediate stage k (deleted when no longer needed)
    result.wav      the emitted audio: the result file, and the replay store
    chunks.jsonl    one line of analysis (levels, waveform, spectrum) per emitted chunk

Replaying a chunk reads its line and its PCM back from disk, so a long task
keeps only a few integers per chunk in memory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .audio.encode import WavWriter


class ChunkStore:
    """Emitted chunks, appended in index order and read back by index."""

    def __init__(self, folder: Path, *, sample_rate: int, channels: int) -> None:
        self.wav = WavWriter(folder / "result.wav", sample_rate=sample_rate, channels=channels)
        self._meta_fd = os.open(folder / "chunks.jsonl", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._meta_bytes = 0
        # Per chunk: (analysis offset, analysis length, PCM offset, PCM length).
        self._index: list[tuple[int, int, int, int]] = []

    def __len__(self) -> int:
        return len(self._index)

    @property
    def path(self) -> Path:
        """The result WAV file."""
        return self.wav.path

    def append(self, meta: dict[str, Any], pcm: bytes) -> None:
        """Store the next chunk (call in index order, from one thread at a time)."""
        line = (json.dumps(meta, separators=(",", ":")) + "\n").encode()
        os.pwrite(self._meta_fd, line, self._meta_bytes)
        pcm_offset = self.wav.append(pcm)
        self._index.append((self._meta_bytes, len(line), pcm_offset, len(pcm)))
        self._meta_bytes += len(line)

    def read(self, index: int) -> tuple[dict[str, Any], bytes]:
        """Return the analysis and PCM of an emitted chunk."""
        _, _, pcm_offset, pcm_length = self._index[index]
        return self.read_meta(index), self.wav.read(pcm_offset, pcm_length)

    def read_meta(self, index: int) -> dict[str, Any]:
        """Return the analysis of an emitted chunk."""
        meta_offset, meta_length, _, _ = self._index[index]
        return json.loads(os.pread(self._meta_fd, meta_length, meta_offset))

    def finalize(self) -> None:
        """Make result.wav a complete WAV of the chunks stored so far."""
        self.wav.finalize()

    def close(self) -> None:
        self.wav.close()
        os.close(self._meta_fd)


def remove_folder(folder: Path) -> None:
    """Delete a task's folder and everything in it."""
    shutil.rmtree(folder, ignore_errors=True)
