"""A task's folder on disk, and the store of the chunks it has emitted.

Each task owns ``<DATA_DIR>/<task_id>/``::

    upload          the uploaded file (deleted when the task ends)
    spool-<k>.f32   output of intermediate stage k (deleted when no longer needed)
    result.wav      the emitted audio: the result file, and the replay store
    result.<ext>    the result in another format, when one was asked for
    chunks.jsonl    one line of analysis (levels, waveform, spectrum) per emitted chunk
    task.json       the task as last saved (accepted, started, ended)

Replaying a chunk reads its line and its PCM back from disk, so a long task
keeps only a few integers per chunk in memory. task.json is written when a
task is accepted, when it starts and when it ends; after a restart, finished
tasks are read back from their folders, and those a crash interrupted are
kept as failed with the chunks they had emitted (``ChunkStore.recover``).
A folder without task.json is half-created, and is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .audio.encode import WavWriter
from .audio.pipeline import Stage
from .exceptions import InsufficientStorage


class ChunkStore:
    """Emitted chunks, appended in index order and read back by index."""

    def __init__(
        self,
        folder: Path,
        *,
        sample_rate: int,
        channels: int,
        existing: bool = False,
        indexed: bool = True,
    ) -> None:
        """Create a store's files, or open a finished one's (existing).

        indexed=False does not read a finished store's analysis back to index it:
        a cluster's web instance has the index from the task's stream in Redis.
        """
        self.wav = WavWriter(
            folder / "result.wav", sample_rate=sample_rate, channels=channels, existing=existing
        )
        flags = os.O_RDWR if existing else os.O_RDWR | os.O_CREAT | os.O_TRUNC
        self._meta_fd = os.open(folder / "chunks.jsonl", flags, 0o600)
        self._meta_bytes = 0
        # Per chunk: (analysis offset, analysis length, PCM offset, PCM length).
        self._index: list[tuple[int, int, int, int]] = []
        if existing and indexed:
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

    def recover(self) -> None:
        """After a crash: keep the chunks whose analysis and PCM are both whole, drop the rest.

        A chunk's analysis line is written before its PCM, so the last line may
        name PCM that never reached the file; the files are cut to match.
        """
        whole = 0
        while whole < len(self._index):
            _, _, pcm_offset, pcm_length = self._index[whole]
            if pcm_offset + pcm_length > self.wav.data_bytes:
                break
            whole += 1
        del self._index[whole:]
        self._meta_bytes = sum(entry[1] for entry in self._index)
        os.ftruncate(self._meta_fd, self._meta_bytes)
        self.wav.truncate(sum(entry[3] for entry in self._index))

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

    def locate(self, index: int) -> tuple[int, int, int, int]:
        """Where chunk index is: (analysis offset, length, PCM offset in the data, length)."""
        return self._index[index]

    def read(self, index: int) -> tuple[dict[str, Any], bytes]:
        """Return the analysis and PCM of an emitted chunk."""
        _, _, pcm_offset, pcm_length = self._index[index]
        return self.read_meta(index), self.wav.read(pcm_offset, pcm_length)

    def read_meta(self, index: int) -> dict[str, Any]:
        """Return the analysis of an emitted chunk."""
        meta_offset, meta_length, _, _ = self._index[index]
        meta: dict[str, Any] = json.loads(os.pread(self._meta_fd, meta_length, meta_offset))
        return meta

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
        snapshot: dict[str, Any] = json.loads((folder / SNAPSHOT).read_text())
    except (OSError, ValueError):
        return None
    return snapshot


def folder_bytes(folder: Path) -> int:
    """Return the bytes the files of a folder take."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


# chunks.jsonl: about 2.3 kB per second of audio (the waveform) and 0.7 kB per chunk (levels,
# spectrum); rounded up.
ANALYSIS_BYTES_PER_SECOND = 2_500
ANALYSIS_BYTES_PER_CHUNK = 1_000
MB = 1024 * 1024


def expected_bytes(
    *, seconds: float, stages: Sequence[Stage], chunk_seconds: float, encoded: bool
) -> int:
    """Return the most a task's files take: spools, result WAV (and encoded copy), analysis.

    The encoded result (FLAC, MP3, ...) is counted as large as the WAV, which
    none exceeds by much; spools are float32, the WAV 16-bit.
    """
    spools = sum(seconds * stage.output_rate * stage.output_channels * 4 for stage in stages[:-1])
    last = stages[-1]
    result = seconds * last.output_rate * last.output_channels * 2 * (2 if encoded else 1)
    analysis = seconds * (ANALYSIS_BYTES_PER_SECOND + ANALYSIS_BYTES_PER_CHUNK / chunk_seconds)
    return int(spools + result + analysis)


def check_room(folder: Path, needed: int, *, reserve: int) -> None:
    """Raise InsufficientStorage unless needed bytes fit on folder's disk with reserve left free."""
    free = shutil.disk_usage(folder).free
    if free - needed < reserve:
        raise InsufficientStorage(
            f"The server's disk cannot hold this task: it would write about "
            f"{needed / MB:,.0f} MB (with what the running tasks have still to write), and "
            f"{free / MB:,.0f} MB are free, {reserve / MB:,.0f} MB of them kept in reserve. "
            "Try again later, or send a shorter file or one at a lower sample rate."
        )
