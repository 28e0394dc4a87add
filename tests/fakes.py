"""Tiny in-memory stand-ins for the engine's seams (the real ones: chunklog, delivery, run).

``Recorder`` (helpers.py) is the fake ``Publisher``; ``MemoryTaskStore`` is
itself the in-process ``TaskStore``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from audioserver.chunklog import LogClosed, WaitableLog
from audioserver.task import TaskOptions


class MemoryChunkLog(WaitableLog):
    """A ChunkLog in memory; ``hook`` runs after each append and end (for interleavings)."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[tuple[dict[str, Any], bytes]] = []
        self.hook: Callable[[str, int], None] = lambda what, length: None

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, meta: dict[str, Any], pcm: bytes) -> int:
        with self._changed:
            self.entries.append((meta, pcm))
            self._changed.notify_all()
        self.hook("append", len(self.entries))
        return len(self.entries) - 1

    def end(self, event: str, data: dict[str, Any]) -> None:
        with self._changed:
            self._terminal = (event, data)
            self._changed.notify_all()
        self.hook("end", len(self.entries))

    def read(self, index: int) -> tuple[dict[str, Any], bytes]:
        if self._closed:
            raise LogClosed("closed")
        return self.entries[index]

    def read_meta(self, index: int) -> dict[str, Any]:
        return self.read(index)[0]

    def finalize(self) -> None:
        pass

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


@dataclass
class LogTask:
    """What Delivery reads of a task: its id, its log, its options and chunk count."""

    id: str
    chunk_log: MemoryChunkLog = field(default_factory=MemoryChunkLog)
    options: TaskOptions = field(default_factory=lambda: TaskOptions(pipeline=None))  # type: ignore[arg-type]
    chunks_total: int | None = None

    def write(self, count: int, *, start: int = 0) -> None:
        """Append count chunks (their meta says their index; their audio is 4 bytes)."""
        for index in range(start, start + count):
            meta = {
                "task_id": self.id, "index": index, "start": index * 0.1, "duration": 0.1,
                "sample_rate": 10, "channels": 1, "peak_db": -6.0, "rms_db": -9.0,
                "waveform": [[-0.5, 0.5]], "spectrum": [-60.0] * 8, "encoding": "pcm_s16le",
                "processing_ms": 1.0, "worker": "worker_0", "frames": 1, "waveform_first": index,
            }  # fmt: skip
            self.chunk_log.append(meta, index.to_bytes(4, "little"))

    def finish(self, event: str = "processing_complete") -> None:
        data = {"task_id": self.id, "status": "completed", "chunks_emitted": len(self.chunk_log)}
        self.chunk_log.end(event, data)


class HeldRunner:
    """A Runner whose pool is the test: jobs wait until the test runs them, in its order."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, Callable[[], None]]] = []
        self._changed = threading.Condition()

    def start(self, name: str, target: Callable[[], None]) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    def submit(self, key: str, job: Callable[[], None]) -> None:
        with self._changed:
            self.jobs.append((key, job))
            self._changed.notify_all()

    def forget(self, key: str) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def wait_jobs(self, count: int, *, timeout: float = 30.0) -> list[Callable[[], None]]:
        """Take the first count jobs submitted, once there are as many."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.jobs) >= count, timeout), self.jobs
            taken, self.jobs = self.jobs[:count], self.jobs[count:]
        return [job for _, job in taken]
