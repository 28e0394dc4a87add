"""A task: one uploaded file going through its pipeline, and what it has produced.

Also the two small flow-control primitives a task's threads share: the
``Window`` that bounds its chunks in flight, and the ``JobCounter`` that
tells when no job of it touches its files any more.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audio.decode import AudioInfo, Decoder
from .audio.encoders import StreamEncoder
from .audio.meter import ChunkMeasure, OutputMeter
from .audio.pipeline import Pipeline, Stage
from .chunklog import ChunkLog, FileChunkLog
from .storage import ChunkStore

if TYPE_CHECKING:  # messages.py names the statuses of task.py
    from .messages import TaskJson

logger = logging.getLogger("audioserver.tasks")

INTERNAL_META = frozenset({"frames", "waveform_first"})  # stored with a chunk, not sent


class Status(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


TERMINAL = frozenset({Status.COMPLETED, Status.STOPPED, Status.FAILED})


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """What the client chose for a task."""

    pipeline: Pipeline
    chunk_seconds: float = 2.0
    format: str = "wav"
    stream_audio: bool = True


@dataclass(frozen=True)
class ChunkOutput:
    """A processed chunk waiting for its turn to be emitted."""

    meta: dict[str, Any]
    pcm: bytes
    measure: ChunkMeasure
    ends_job: bool = True  # the last chunk of its job: emitting it frees the job's window slot


class Window:
    """Bounds a task's chunks between submission and emission; cancelling frees every waiter."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._in_use = 0
        self._cancelled = False
        self._condition = threading.Condition()

    def acquire(self) -> bool:
        """Take a slot, waiting for one; False if the window was cancelled."""
        with self._condition:
            while self._in_use >= self.size and not self._cancelled:
                self._condition.wait()
            if self._cancelled:
                return False
            self._in_use += 1
            return True

    def release(self) -> None:
        with self._condition:
            self._in_use -= 1
            self._condition.notify_all()

    def drain(self) -> bool:
        """Wait until every slot is released; False if the window was cancelled."""
        with self._condition:
            while self._in_use > 0 and not self._cancelled:
                self._condition.wait()
            return not self._cancelled

    def cancel(self) -> None:
        with self._condition:
            self._cancelled = True
            self._condition.notify_all()


class FairQueue:
    """The jobs of every task, for one pool: the next job goes to the task that used least CPU.

    A pool worker takes one job per ``run_next``: the oldest job of the task
    whose jobs have used the least CPU time so far (each task's own jobs keep
    their order). A task that becomes ready again starts no lower than the
    least of those already waiting, so it cannot bank time while it had
    nothing to do: a new task gets its share at once, and no task more than its
    share, however costly its jobs are.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[str, deque[Callable[[], None]]] = {}
        self._used: dict[str, float] = {}  # CPU seconds of each task's jobs

    def put(self, key: str, job: Callable[[], None]) -> None:
        """Queue a job of task key (call ``run_next`` once for each job put)."""
        with self._lock:
            queue = self._ready.get(key)
            if queue is None:
                floor = min((self._used[other] for other in self._ready), default=0.0)
                self._used[key] = max(self._used.get(key, 0.0), floor)
                queue = self._ready[key] = deque()
            queue.append(job)

    def run_next(self) -> None:
        """Run the next job of the task that has used least CPU, and count what it used."""
        with self._lock:
            key = min(self._ready, key=self._used.__getitem__)
            queue = self._ready[key]
            job = queue.popleft()
            if not queue:
                del self._ready[key]
        started = time.thread_time()
        try:
            job()
        finally:
            with self._lock:
                self._used[key] = self._used.get(key, 0.0) + time.thread_time() - started

    def forget(self, key: str) -> None:
        """Drop what a task used, once it has no job queued or running."""
        with self._lock:
            if key not in self._ready:
                self._used.pop(key, None)


class JobCounter:
    """Counts a task's jobs in the pool, so its files are closed only when none can touch them."""

    def __init__(self) -> None:
        self._running = 0
        self._condition = threading.Condition()

    def add(self) -> None:
        with self._condition:
            self._running += 1

    def done(self) -> None:
        with self._condition:
            self._running -= 1
            self._condition.notify_all()

    def wait_idle(self) -> None:
        with self._condition:
            while self._running:
                self._condition.wait()


def now() -> datetime:
    """Return the current UTC time to the millisecond (as the task JSON shows it)."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def parse_iso(text: str | None) -> datetime | None:
    """Return the moment an ISO 8601 text names (None for None)."""
    return datetime.fromisoformat(text) if text else None


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


class Task:
    """One uploaded file going through its pipeline, and everything it has produced."""

    def __init__(
        self,
        *,
        task_id: str,
        filename: str,
        folder: Path,
        info: AudioInfo,
        options: TaskOptions,
        stages: list[Stage],
        window: int,
        existing: bool = False,
        indexed: bool = True,
    ) -> None:
        self.id = task_id
        self.filename = filename
        self.folder = folder
        self.info = info
        self.options = options
        self.stages = stages
        self.status = Status.QUEUED
        self.created_at = now()
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.error: dict[str, str] | None = None
        self.summary: dict[str, Any] | None = None
        self.warnings: list[dict[str, str]] = []
        self.duration = info.duration
        self.log = logging.LoggerAdapter(logger, {"task_id": task_id})
        # Everything below is guarded by self.lock.
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.window = Window(window)
        self.jobs = JobCounter()
        self.decoder: Decoder | None = None
        self.next_index = 0
        self.reorder: dict[int, ChunkOutput] = {}
        self.chunks_final: int | None = None
        self.work_done = 0
        self.stage_done = [0] * len(stages)  # chunks done in each stage (processing_progress)
        self.progress_sent = -math.inf  # time.monotonic() of the last processing_progress
        self.meter = OutputMeter(sample_rate=stages[-1].output_rate)
        self.measures: list[ChunkMeasure] = []
        self.output_frames = 0
        self.deleted = False
        self.runner_done = False
        self.retired = threading.Event()  # set when no thread of the task touches its files
        self.encoder: StreamEncoder | None = None
        self.result_path: Path | None = None  # the result file, once it is complete
        self.result_error: str | None = None
        last = stages[-1]
        self.store = ChunkStore(
            folder,
            sample_rate=last.output_rate,
            channels=last.output_channels,
            existing=existing,
            indexed=indexed,
        )
        self.chunk_log: ChunkLog = FileChunkLog(self.store)

    @property
    def terminal(self) -> tuple[str, dict[str, Any]] | None:
        """The task's terminal event (name, data), once it has ended."""
        return self.chunk_log.terminal

    def snapshot(self, *, workers: int) -> dict[str, Any]:
        """Return what a finished task needs to be served again after a restart."""
        return {
            "task": self.to_json(workers=workers),
            "terminal": list(self.terminal) if self.terminal else None,
            "result": self.result_path.name if self.result_path else None,
            "result_error": self.result_error,
        }

    @classmethod
    def restore(
        cls, folder: Path, snapshot: dict[str, Any], *, window: int, indexed: bool = True
    ) -> Task:
        """Return a finished task read back from its folder (raise on anything missing).

        indexed=False leaves its chunks unread (none counted): a cluster's web
        instance knows them from the task's stream in Redis.
        """
        described = snapshot["task"]
        source = described["input"]
        info = AudioInfo(source["sample_rate"], source["channels"], source["duration"],
                         source["codec"])  # fmt: skip
        options = TaskOptions(
            pipeline=Pipeline.parse(described["pipeline"]),
            chunk_seconds=described["chunk_seconds"],
            format=described["format"],
            stream_audio=described["stream_audio"],
        )
        stages = options.pipeline.plan(
            info.sample_rate, info.channels, output_pre_roll=OutputMeter.pre_roll
        )
        task = cls(
            task_id=described["task_id"], filename=described["filename"], folder=folder,
            info=info, options=options, stages=stages, window=window, existing=True,
            indexed=indexed,
        )  # fmt: skip
        task.status = Status(described["status"])
        task.created_at = datetime.fromisoformat(described["created_at"])  # a task always has one
        task.started_at, task.finished_at = (
            parse_iso(described[key]) for key in ("started_at", "finished_at")
        )
        task.error, task.summary = described["error"], described["summary"]
        task.warnings = described.get("warnings", [])
        task.duration = described["duration"]
        task.next_index = task.chunks_final = len(task.store)
        task.work_done = len(task.store) * len(stages)
        if snapshot["terminal"]:
            event, data = snapshot["terminal"]
            task.chunk_log.end(event, data)
        task.result_path = folder / snapshot["result"] if snapshot["result"] else None
        task.result_error = snapshot["result_error"]
        task.stopping.set()
        task.runner_done = True
        task.retired.set()
        return task

    @property
    def room(self) -> str:
        return f"task:{self.id}"

    def chunk_frames(self, stage: int) -> int:
        """Frames of a chunk at the input of a stage."""
        return self.stages[stage].chunk_frames(self.options.chunk_seconds)

    def job_frames(self, stage: int) -> int:
        """Frames of a job (one or more whole chunks) at the input of a stage."""
        frames = self.chunk_frames(stage)
        return frames * self.stages[stage].chunks_per_job(frames)

    @property
    def chunks_total(self) -> int | None:
        """The number of chunks: exact once decoding ended, else estimated from the duration."""
        if self.chunks_final is not None:
            return self.chunks_final
        if self.duration is None:
            return None
        frames = self.duration * self.stages[-1].input_rate
        return max(self.next_index, math.ceil(frames / self.chunk_frames(len(self.stages) - 1)))

    def stage_chunks_total(self, stage: int) -> int | None:
        """A stage's chunk count, estimated from the duration (exact once decoding ended)."""
        if stage == len(self.stages) - 1:
            return self.chunks_total
        if self.duration is None:
            return None
        frames = self.duration * self.stages[stage].input_rate
        return max(self.stage_done[stage], math.ceil(frames / self.chunk_frames(stage)))

    @property
    def progress(self) -> float:
        if self.status == Status.COMPLETED:
            return 1.0
        total = self.chunks_total
        if not total:
            return 0.0
        return min(1.0, self.work_done / (total * len(self.stages)))

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return ((self.finished_at or now()) - self.started_at).total_seconds()

    def to_json(self, *, workers: int) -> TaskJson:
        """Return the task as the API shows it."""
        last = self.stages[-1]
        return {
            "task_id": self.id,
            "status": str(self.status),
            "filename": self.filename,
            "duration": self.duration,
            "sample_rate": last.output_rate,
            "channels": last.output_channels,
            "input": {
                "sample_rate": self.info.sample_rate,
                "channels": self.info.channels,
                "codec": self.info.codec,
                "duration": self.info.duration,
            },
            "chunk_seconds": self.options.chunk_seconds,
            "chunks_total": self.chunks_total,
            "chunks_done": self.next_index,
            "progress": round(self.progress, 4),
            "pipeline": self.options.pipeline.to_json(),
            "format": self.options.format,
            "stream_audio": self.options.stream_audio,
            "workers": workers,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "elapsed": round(self.elapsed, 3),
            "error": self.error,
            "warnings": self.warnings,
            "summary": self.summary,
            "links": {
                "status": f"/tasks/{self.id}",
                "result": f"/tasks/{self.id}/result",
                "stop": "/stop-processing",
            },
        }
