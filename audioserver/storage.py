"""A task's folder on disk, and the store of the chunks it has emitted.

Each task owns ``<DATA_DIR>/<task_id>/``::

    upload          the uploaded file (deleted when the task ends)
    spool-<k>.f32   output of intermediate stage k (deleted when no longer needed)
    result.wav      the emitted audio: the result file, and the replay store
    result.<ext>    the result in another format, when one was asked for
    chunks.jsonl    one line of analysis (levels, waveform, spectrum) per emitted chunk
    task.json       the finished task (written last: a folder without it is unfinished)

Replaying a chunk reads its line and its PCM back from disk, so a long task
keeps only a few integers per chunk in memory. After a restart, finished
tasks are read back from their folders; unfinished ones are what a crash
left behind, and are deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .audio.encode import WavWriter


class ChunkStore:
    """Emitted chunks, appended in index order and read back by index."""

    def __init__(
        self, folder: Path, *, sample_rate: int, channels: int, existing: bool = False
    ) -> None:
        self.wav = WavWriter(
            folder / "result.wav", sample_rate=sample_rate, channels=channels, existing=existing
        )
        flags = os.O_RDWR if existing else os.O_RDWR | os.O_CREAT | os.O_TRUNC
        self._meta_fd = os.open(folder / "chunks.jsonl", flags, 0o600)
        self._meta_bytes = 0
        # Per chunk: (analysis offset, analysis length, PCM offset, PCM length).
        self._index: list[tuple[int, int, int, int]] = []
        if existing:
            self._reindex(frame_bytes=channels * 2)

    def _reindex(self, *, frame_bytes: int) -> None:
        """Rebuild the index of a finished store from its analysis lines."""
        size = os.fstat(self._meta_fd).st_size
        lines = os.pread(self._meta_fd, size, 0).split(b"\n")[:-1]
        pcm_offset = 0
        for line in lines:
            pcm_length = json.loads(line)["frames"] * frame_bytes
            self._index.append((self._meta_bytes, len(line) + 1, pcm_offset, pcm_length))
            self._meta_bytes += len(line) + 1
            pcm_offset += pcm_length

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


SNAPSHOT = "task.json"


def save_snapshot(folder: Path, snapshot: dict[str, Any]) -> None:
    """Write a finished task's description into its folder, atomically."""
    part = folder / (SNAPSHOT + ".part")
    part.write_text(json.dumps(snapshot))
    os.replace(part, folder / SNAPSHOT)


def load_snapshot(folder: Path) -> dict[str, Any] | None:
    """Return a folder's finished-task description, None if it has none (or a broken one)."""
    try:
        return json.loads((folder / SNAPSHOT).read_text())
    except (OSError, ValueError):
        return None


def folder_bytes(folder: Path) -> int:
    """Return the bytes the files of a folder take."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total
