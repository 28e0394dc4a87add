"""Tasks and the engine that runs them: the thread pool, ordered emission, stop flags, replay.

One ``ThreadPoolExecutor`` processes the chunks of every task. Each active
task has a runner thread that feeds it: it reads chunks from the decoder (or,
after a global step, from the previous stage's spool) and submits them,
never more than ``chunk_window`` at a time, so memory stays bounded and the
chunks of active tasks interleave in the pool. Workers check the task's stop
flag before and after each chunk. Results of the last stage go through a
reorder buffer so that events leave in index order, under the task's lock;
the same lock makes a late subscriber's replay meet the live stream with no
gap and no duplicate.

The engine knows nothing of Socket.IO: it reports through a ``Broadcaster``
that ``events.py`` wires to ``socketio.emit``. Only this module starts threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from .audio import analysis
from .audio.chunking import Chunk, Spool, decoded_chunks, spooled_chunks
from .audio.decode import AudioInfo, Decoder
from .audio.encoders import FORMATS, EncodeError, StreamEncoder
from .audio.meter import OutputMeter
from .audio.pipeline import Stage
from .audio.steps import Block
from .exceptions import (
    AtCapacity,
    AudioServerError,
    BadRequest,
    DecodeError,
    InsufficientStorage,
    ParameterError,
    PayloadTooLarge,
    TaskConflict,
    TaskNotFound,
)
from .storage import (
    check_room,
    expected_bytes,
    folder_bytes,
    load_snapshot,
    remove_folder,
    save_snapshot,
)
from .task import (
    INTERNAL_META,
    TERMINAL,
    ChunkOutput,
    FairQueue,
    Status,
    Task,
    TaskOptions,
    now,
)

__all__ = ["Broadcaster", "Status", "Task", "TaskEngine", "TaskOptions"]

logger = logging.getLogger(__name__)

UPLOAD_NAME = "upload"
TRUNCATED_FRACTION = 0.9  # decoded audio shorter than this part of the announced length
TASK_FOLDER = re.compile(r"[0-9a-f]{32}")  # uuid4 hex: the only folders the engine owns
RESULT_WAIT_SECONDS = 60.0
# CPU nanoseconds per output sample of the per-chunk analysis (levels, waveform,
# spectrum, loudness and true peak, 16-bit PCM), for the cost estimate.
ANALYSIS_COST_NS = 60.0
# Sample rates the server takes: loudness (BS.1770's K-weighting) needs a band up to a
# few kHz, and 768 kHz is the highest rate any audio format in use has.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768_000
PROGRESS_SECONDS = 0.25  # processing_progress: at most 4 a second per task, plus one per stage end


class Broadcaster(Protocol):
    """Where the engine sends events: a Socket.IO server, or a recorder in tests."""

    def emit(self, event: str, data: dict[str, Any], *, to: str) -> None: ...
    def prepare(self, event: str, data: dict[str, Any]) -> Any: ...
    def send(self, prepared: Any, *, to: str, max_backlog: int | None = None) -> list[str]: ...
    def backlog(self, sid: str) -> int | None: ...
    def join(self, sid: str, room: str) -> None: ...
    def leave(self, sid: str, room: str) -> None: ...
    def is_connected(self, sid: str) -> bool: ...
    def resolve(self, sid: str) -> str | None: ...


class Observer(Protocol):
    """Where the engine reports what it did, for metrics."""

    def task_ended(self, outcome: str) -> None: ...
    def chunk_processed(self, seconds: float) -> None: ...
    def chunk_emitted(self, *, audio_seconds: float, audio_bytes: int) -> None: ...


class NullObserver:
    """An observer that keeps nothing."""

    def task_ended(self, outcome: str) -> None:
        pass

    def chunk_processed(self, seconds: float) -> None:
        pass

    def chunk_emitted(self, *, audio_seconds: float, audio_bytes: int) -> None:
        pass


class NullBroadcaster:
    """A broadcaster with no clients."""

    def emit(self, event: str, data: dict[str, Any], *, to: str) -> None:
        pass

    def prepare(self, event: str, data: dict[str, Any]) -> Any:
        return None

    def send(self, prepared: Any, *, to: str, max_backlog: int | None = None) -> list[str]:
        return []

    def backlog(self, sid: str) -> int | None:
        return None

    def join(self, sid: str, room: str) -> None:
        pass

    def leave(self, sid: str, room: str) -> None:
        pass

    def is_connected(self, sid: str) -> bool:
        return False

    def resolve(self, sid: str) -> str | None:
        return None


class TaskEngine:
    """Accepts tasks, runs them on one shared thread pool, and reports their events."""

    def __init__(
        self,
        *,
        data_dir: Path,
        ffmpeg: str,
        workers: int = 2,
        max_active: int = 4,
        max_queued: int = 32,
        chunk_window: int = 0,
        max_audio_seconds: float = 4 * 3600.0,
        max_audio_samples: int = 4 * 3600 * 48000 * 2,
        max_pipeline_cost: float = 1.0,
        stall_seconds: float = 30.0,
        client_backlog: int = 16,
        result_ttl_seconds: float = 24 * 3600.0,
        max_data_bytes: int = 0,
        sweep_seconds: float = 60.0,
        disk_reserve_bytes: int = 0,
        broadcaster: Broadcaster | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ffmpeg = ffmpeg
        self.workers = workers
        self.max_active = max_active
        self.max_queued = max_queued
        self.chunk_window = chunk_window or max(2, 2 * workers)
        self.max_audio_seconds = max_audio_seconds
        self.max_audio_samples = max_audio_samples
        self.max_pipeline_cost = max_pipeline_cost
        self.stall_seconds = stall_seconds
        self.client_backlog = client_backlog
        self.broadcaster: Broadcaster = broadcaster or NullBroadcaster()
        self.observer: Observer = observer or NullObserver()
        # The pool runs chunks in parallel; BLAS threading inside each chunk's matrix
        # products would only fight it for the same cores (OpenBLAS spins while it waits).
        threadpool_limits(limits=1, user_api="blas")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="worker")
        self._fair = FairQueue()  # which task's job a free worker takes next
        # Starting a decoder and planning take the GIL for a few ms each; twenty uploads
        # at once would hold it long enough to delay every other request.
        self._probing = threading.BoundedSemaphore(max(2, workers))
        self._lock = threading.Lock()
        self._tasks: dict[str, Task] = {}
        self._queue: deque[Task] = deque()
        self._active: set[str] = set()
        self._deleting: set[Task] = set()  # deleted, their folders not yet removed
        self._closed = False
        self.result_ttl_seconds = result_ttl_seconds
        self.max_data_bytes = max_data_bytes
        self.disk_reserve_bytes = disk_reserve_bytes
        self._restore()
        self._stop_sweeping = threading.Event()
        self.swept = threading.Event()  # set after each periodic sweep
        if sweep_seconds > 0:
            threading.Thread(
                target=self._sweep_every, args=(sweep_seconds,), name="sweeper", daemon=True
            ).start()

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        data_dir: Path,
        ffmpeg: str,
        broadcaster: Broadcaster | None = None,
        observer: Observer | None = None,
        **overrides: Any,
    ) -> TaskEngine:
        """Build the engine from the settings (``config.py``'s names); overrides win."""
        mb = 1024 * 1024
        settings: dict[str, Any] = {
            "workers": config["WORKERS"],
            "max_active": config["MAX_ACTIVE_TASKS"],
            "max_queued": config["MAX_QUEUED_TASKS"],
            "chunk_window": config["CHUNK_WINDOW"],
            "max_audio_seconds": config["MAX_AUDIO_SECONDS"],
            "max_audio_samples": config["MAX_AUDIO_SAMPLES"],
            "max_pipeline_cost": config["MAX_PIPELINE_COST"],
            "stall_seconds": config["DECODE_STALL_SECONDS"],
            "client_backlog": config["CLIENT_BACKLOG"],
            "result_ttl_seconds": config["RESULT_TTL_HOURS"] * 3600,
            "max_data_bytes": int(config["MAX_DATA_MB"] * mb),
            "sweep_seconds": config["SWEEP_SECONDS"],
            "disk_reserve_bytes": int(config["DISK_RESERVE_MB"] * mb),
        }
        settings.update(overrides)
        return cls(
            data_dir=data_dir, ffmpeg=ffmpeg, broadcaster=broadcaster, observer=observer, **settings
        )

    # -- surviving restarts, and cleaning up ------------------------------------------

    def _restore(self) -> None:
        """Take back the finished tasks of an earlier run; delete what a crash left half-written."""
        for part in (self.data_dir / "uploads").glob("*.part"):
            part.unlink(missing_ok=True)
        restored, removed, interrupted = 0, 0, 0
        for folder in sorted(self.data_dir.iterdir()):
            if not (folder.is_dir() and TASK_FOLDER.fullmatch(folder.name)):
                continue  # not ours: leave it alone
            snapshot = load_snapshot(folder)
            try:
                task = (
                    Task.restore(folder, snapshot, window=self.chunk_window) if snapshot else None
                )
            except Exception:  # a folder we cannot read back is as good as half-written
                logger.warning("cannot restore task folder %s", folder.name, exc_info=True)
                task = None
            if task is None:
                remove_folder(folder)
                removed += 1
                continue
            for leftover in (UPLOAD_NAME, "spool-*.f32", "*.part"):
                for path in folder.glob(leftover):
                    path.unlink(missing_ok=True)
            if task.status not in TERMINAL:
                self._fail_interrupted(task)
                interrupted += 1
            self._tasks[task.id] = task
            restored += 1
        if restored or removed:
            logger.info(
                "restored %d tasks (%d interrupted by the last stop: failed, partial results "
                "kept); removed %d half-created",
                restored, interrupted, removed,
            )  # fmt: skip

    def _fail_interrupted(self, task: Task) -> None:
        """Keep a task that a crash (kill -9, power loss) interrupted: failed, with its chunks."""
        was = task.status
        task.store.recover()
        task.next_index = task.chunks_final = len(task.store)
        task.output_frames = task.store.wav.data_bytes // (2 * task.stages[-1].output_channels)
        for path in task.folder.glob("result.*"):
            if path != task.store.path:
                path.unlink(missing_ok=True)  # an encoding that never finished
        if task.next_index:
            task.result_path = task.store.path
            kept = (
                f"the {task.next_index} chunks it had emitted are its partial result "
                f"(GET /tasks/{task.id}/result, as WAV)"
            )
        else:
            kept = "it had emitted nothing"
        message = (
            f"The server stopped while this task was {was} (a crash or a kill); {kept}. "
            "Upload the file again to process all of it."
        )
        task.status = Status.FAILED
        task.finished_at = now()
        task.error = {"error": "server_restarted", "message": message}
        task.terminal = ("processing_error", {**self._terminal_core(task, Status.FAILED),
                                              **task.error})  # fmt: skip
        save_snapshot(task.folder, task.snapshot(workers=self.workers))
        task.log.warning("interrupted by the last stop of the server: now failed; %s", kept)

    def _save_unfinished(self, task: Task) -> None:
        """Write task.json of a task that has not ended, so a crash cannot make it vanish."""
        with task.lock:
            if task.status not in TERMINAL and not task.deleted:
                save_snapshot(task.folder, task.snapshot(workers=self.workers))

    def sweep(self, *, moment: datetime | None = None) -> list[str]:
        """Delete results past their time to live, then the oldest while over the size cap."""
        moment = moment or now()
        with self._lock:
            finished = sorted(
                (task for task in self._tasks.values() if task.status in TERMINAL),
                key=lambda task: task.finished_at or task.created_at,
            )
        expired = [
            task
            for task in finished
            if (moment - (task.finished_at or task.created_at)).total_seconds()
            > self.result_ttl_seconds
        ]
        if self.max_data_bytes:
            excess = folder_bytes(self.data_dir) - self.max_data_bytes
            excess -= sum(folder_bytes(task.folder) for task in expired)
            for task in finished:  # oldest first
                if excess <= 0:
                    break
                if task not in expired:
                    excess -= folder_bytes(task.folder)
                    expired.append(task)
        for task in expired:
            with contextlib.suppress(TaskNotFound):
                self.delete(task.id)
        if expired:
            logger.info("swept %d finished tasks", len(expired))
        return [task.id for task in expired]

    def _sweep_every(self, seconds: float) -> None:
        while not self._stop_sweeping.wait(seconds):
            try:
                self.sweep()
            except Exception:  # the sweeper must outlive a bad day
                logger.exception("sweep failed")
            self.swept.set()

    # -- looking up -------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        """Return a task, or raise TaskNotFound."""
        task = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise TaskNotFound(
                "No task has this id; it may have been deleted. Upload the file again."
            )
        return task

    def describe(self, task: Task) -> dict[str, Any]:
        """Return a task's JSON."""
        with task.lock:
            return task.to_json(workers=self.workers)

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "status": "ok",
                "workers": self.workers,
                "active_tasks": len(self._active),
                "queued_tasks": len(self._queue),
            }

    # -- accepting --------------------------------------------------------------

    def check_capacity(self) -> None:
        """Raise AtCapacity if a new task could neither start nor wait."""
        with self._lock:
            self._check_capacity_locked()

    def _check_capacity_locked(self) -> None:
        if self._closed:
            raise AtCapacity("The server is shutting down. Try again in a moment.", retry_after=10)
        if len(self._active) >= self.max_active and len(self._queue) >= self.max_queued:
            raise AtCapacity(
                f"The server is at capacity ({len(self._active)} tasks running, "
                f"{len(self._queue)} waiting). Try again in a few seconds.",
                retry_after=5,
            )

    def open_decoder(self, path: Path) -> Decoder:
        """Start decoding a file (raise DecodeError if it is not audio)."""
        return Decoder(
            path,
            ffmpeg=self.ffmpeg,
            max_seconds=self.max_audio_seconds,
            stall_seconds=self.stall_seconds,
        )

    def create(
        self, upload: Path, *, filename: str, options: TaskOptions, subscriber: str | None = None
    ) -> Task:
        """Take an uploaded file (moved into the task's folder) and queue its task.

        Raises AtCapacity, DecodeError (not audio) or ParameterError (a step
        cannot run at the file's sample rate); the upload is deleted then.
        """
        self.check_capacity()
        if subscriber is not None:
            subscriber = self.broadcaster.resolve(subscriber)
            if subscriber is None:
                Path(upload).unlink(missing_ok=True)
                raise BadRequest(
                    "sid is not a connected Socket.IO client. Connect first, then send socket.id.",
                    code="invalid_parameter",
                    parameter="sid",
                )
        task_id = uuid.uuid4().hex
        folder = self.data_dir / task_id
        folder.mkdir()
        try:
            source = folder / UPLOAD_NAME
            shutil.move(upload, source)
            with self._probing:  # a burst of uploads is probed a few at a time
                task = self._prepare(task_id, folder, filename, options)
        except BaseException:
            remove_folder(folder)
            raise
        if subscriber is not None:
            self.broadcaster.join(subscriber, task.room)
        self._enqueue(task)
        return task

    def _prepare(self, task_id: str, folder: Path, filename: str, options: TaskOptions) -> Task:
        decoder = self.open_decoder(folder / UPLOAD_NAME)
        try:
            info = decoder.info
            if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
                raise DecodeError(
                    f"The audio's sample rate is {info.sample_rate} Hz; the server takes "
                    f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz. Resample the file first "
                    "(for example: ffmpeg -i in.wav -ar 48000 out.wav)."
                )
            announced = (info.duration or 0) * info.sample_rate * info.channels
            if announced > self.max_audio_samples:
                raise PayloadTooLarge(self._too_much_audio(info), code="too_much_audio")
            if info.duration is not None and info.duration > self.max_audio_seconds:
                raise DecodeError(
                    f"The audio lasts {info.duration:.0f} s; the server takes at most "
                    f"{self.max_audio_seconds:.0f} s. Split the file and upload the parts."
                )
            stages = options.pipeline.plan(
                info.sample_rate, info.channels, output_pre_roll=OutputMeter.pre_roll
            )
            self._check_cost(stages, options.chunk_seconds, info)
            self._check_room(info, stages, options)
            task = Task(
                task_id=task_id,
                filename=filename,
                folder=folder,
                info=info,
                options=options,
                stages=stages,
                window=self.chunk_window,
            )
        except BaseException:
            decoder.close()
            raise
        task.decoder = decoder
        return task

    def _check_cost(self, stages: list[Stage], chunk_seconds: float, info: AudioInfo) -> None:
        """Refuse a pipeline whose estimated CPU cost per second of audio is over the budget."""
        costs = [
            item for stage in stages for item in stage.step_costs(stage.chunk_frames(chunk_seconds))
        ]
        last = stages[-1]
        analysis = ANALYSIS_COST_NS * last.output_rate * last.output_channels * 1e-9
        total = sum(cost for _, cost in costs) + analysis
        if total <= self.max_pipeline_cost:
            return
        costliest = sorted(costs, key=lambda item: -item[1])[:3]
        named = ", ".join(f"{step.name} {cost:.2f}" for step, cost in costliest)
        whole = f" (about {total * info.duration:,.0f} s for this file)" if info.duration else ""
        raise ParameterError(
            f"This pipeline would take about {total:.2f} CPU seconds per second of audio at "
            f"{info.sample_rate} Hz, {info.channels} channels and {chunk_seconds:g} s chunks"
            f"{whole}; the server allows {self.max_pipeline_cost:g}. The costliest steps "
            f"(CPU s per s): {named}. Use fewer or cheaper steps, or a lower resample rate.",
            code="pipeline_too_costly",
        )

    def _too_much_audio(self, info: AudioInfo) -> str:
        limit = self.max_audio_samples
        hours = limit / (48000 * 2 * 3600)
        seconds = limit / (info.sample_rate * info.channels)
        return (
            f"The audio holds more than {limit:,} samples ({hours:g} h of 48 kHz stereo; "
            f"{seconds:,.0f} s at this file's {info.sample_rate} Hz and {info.channels} "
            "channels), the most one upload may decode to. Split the file, or lower its "
            "sample rate or channel count first."
        )

    def _bounded(self, task: Task, source: Iterator[Chunk]) -> Iterator[Chunk]:
        """Pass the decoded chunks on, failing the task once they exceed max_audio_samples."""
        decoder, info = task.decoder, task.info
        limit = self.max_audio_samples // info.channels
        for chunk in source:
            if decoder is not None and decoder.frames_read > limit:
                decoder.kill()
                raise PayloadTooLarge(self._too_much_audio(info), code="too_much_audio")
            yield chunk

    def _check_room(self, info: AudioInfo, stages: list[Stage], options: TaskOptions) -> None:
        """Refuse a task (507) the disk cannot hold besides what running tasks will still write."""
        with self._lock:
            running = [task for task in self._tasks.values() if task.status not in TERMINAL]
        needed = self._expected_bytes(info, stages, options)
        for task in running:
            expected = self._expected_bytes(task.info, task.stages, task.options)
            needed += max(0, expected - folder_bytes(task.folder))
        check_room(self.data_dir, needed, reserve=self.disk_reserve_bytes)
        self._check_cap(needed)

    def _check_cap(self, needed: int) -> None:
        """Keep MAX_DATA_MB with running tasks counted: refuse a task they leave no room for.

        Finished results do not count here: the sweeper deletes the oldest of them
        whenever the folder is over the cap. What cannot be deleted (running tasks'
        files, uploads) plus what the running tasks and this one will write must fit.
        """
        if not self.max_data_bytes:
            return
        with self._lock:
            finished = [task for task in self._tasks.values() if task.status in TERMINAL]
        kept = folder_bytes(self.data_dir) - sum(folder_bytes(task.folder) for task in finished)
        if kept + needed > self.max_data_bytes:
            mb = 1024 * 1024
            raise InsufficientStorage(
                f"The data folder is capped at {self.max_data_bytes / mb:,.1f} MB "
                f"(MAX_DATA_MB): running tasks and uploads hold {kept / mb:,.1f} MB, and this "
                f"task with those running would write up to {needed / mb:,.1f} MB more. Try "
                "again when a running task has ended, or with a shorter file."
            )

    def _expected_bytes(self, info: AudioInfo, stages: list[Stage], options: TaskOptions) -> int:
        """The most a task writes (a file that does not say its length may last the limits)."""
        longest = min(
            self.max_audio_seconds, self.max_audio_samples / (info.sample_rate * info.channels)
        )
        seconds = min(info.duration or longest, longest)
        return expected_bytes(
            seconds=seconds,
            stages=stages,
            chunk_seconds=options.chunk_seconds,
            encoded=FORMATS[options.format].needs_encoder,
        )

    def _enqueue(self, task: Task) -> None:
        idle: Decoder | None = None
        self._save_unfinished(task)  # before any other thread can see the task
        with self._lock:
            try:
                self._check_capacity_locked()
            except AtCapacity:
                refused = True
            else:
                refused = False
                task.log.info(
                    "accepted %r: %s, %d Hz, %d ch, %.1f s, pipeline %r, chunks of %g s",
                    task.filename, task.info.codec, task.info.sample_rate, task.info.channels,
                    task.info.duration or -1, str(task.options.pipeline),
                    task.options.chunk_seconds,
                )  # fmt: skip
                self._tasks[task.id] = task
                self._queue.append(task)
                self._admit_locked()
                if task.status == Status.QUEUED:
                    # Waiting tasks hold no ffmpeg process; it starts again with the task.
                    idle, task.decoder = task.decoder, None
        # Slow work (ending processes, deleting files) outside the lock /healthz also takes.
        if refused:
            self._discard_unstarted(task)
            raise AtCapacity(
                "The server is at capacity. Try again in a few seconds.", retry_after=5
            )
        if idle is not None:
            idle.close()

    def _discard_unstarted(self, task: Task) -> None:
        if task.decoder is not None:
            task.decoder.close()
        task.store.close()
        remove_folder(task.folder)

    def _admit_locked(self) -> None:
        while self._queue and len(self._active) < self.max_active and not self._closed:
            task = self._queue.popleft()
            self._active.add(task.id)
            with task.lock:
                task.status = Status.PROCESSING
                task.started_at = now()
            runner = threading.Thread(
                target=self._run, args=(task,), name=f"task-{task.id[:8]}", daemon=True
            )
            runner.start()

    # -- running ----------------------------------------------------------------

    def _run(self, task: Task) -> None:
        task.log.info("started")
        try:
            self._save_unfinished(task)
            if task.decoder is None:
                task.decoder = self.open_decoder(task.folder / UPLOAD_NAME)
            self._start_encoder(task)
            if self._run_stages(task):
                self._finish_encoding(task)
                self._complete(task)
        except DecodeError as error:
            self._fail(task, "decode_failed", error.message)
        except AudioServerError as error:  # a limit crossed while decoding
            self._fail(task, error.code, error.message)
        except Exception as error:  # a bug or a failing step: this task fails, the pool goes on
            task.log.exception("processing failed")
            self._fail(task, "processing_failed", f"Processing failed: {error}")
        finally:
            self._retire(task)

    def _finish_encoding(self, task: Task) -> None:
        """End the encoding of the result; if it fails, the WAV is the result, with a warning."""
        if task.encoder is None:
            return
        try:
            task.result_path = task.encoder.finish()
        except EncodeError as error:
            task.result_path = task.store.path
            self._warn_encode_failed(task, error)

    def _warn_encode_failed(self, task: Task, error: EncodeError) -> None:
        fmt = task.options.format
        message = (
            f"{error}. The result is the 16-bit WAV instead (all of the processed audio); "
            f"convert it yourself, or process the file again with format={fmt}."
        )
        with task.lock:
            task.warnings.append({"warning": "encode_failed", "format": fmt, "message": message})
        task.log.warning("%s", message)

    def _start_encoder(self, task: Task) -> None:
        """Start encoding the result as it grows, for formats other than WAV."""
        spec = FORMATS[task.options.format]
        if not spec.needs_encoder:
            return
        last = task.stages[-1]
        task.encoder = StreamEncoder(
            task.store.path,
            task.folder / f"result.{spec.extension}",
            format=spec.name,
            sample_rate=last.output_rate,
            channels=last.output_channels,
            ffmpeg=self.ffmpeg,
        )

    def _run_stages(self, task: Task) -> bool:
        """Run every stage; return True if the task ran to the end."""
        first = task.stages[0]
        assert task.decoder is not None, "a running task has its decoder"
        source: Iterator[Chunk] = self._bounded(
            task,
            decoded_chunks(
                task.decoder,
                chunk_frames=task.job_frames(0),
                pre_roll=first.pre_roll,
                post_roll=first.post_roll,
            ),
        )
        spool: Spool | None = None
        try:
            for number, stage in enumerate(task.stages):
                last = number == len(task.stages) - 1
                previous, spool = spool, None
                if not last:
                    spool = Spool(
                        task.folder / f"spool-{number}.f32",
                        channels=stage.output_channels,
                        sample_rate=stage.output_rate,
                    )
                measurements: dict[int, Any] = {}
                count = self._map_stage(task, number, source, spool, measurements)
                if previous is not None:
                    previous.close()
                if count is None:
                    return False
                with task.lock:
                    self._progress(task, stage, stage_end=True)
                if not last:
                    assert stage.boundary is not None and spool is not None, "not the last stage"
                    stage.boundary.reduce([measurements[index] for index in range(count)])
                    task.log.info("stage %d measured: %s", number, stage.boundary.report())
                    following = task.stages[number + 1]
                    source = spooled_chunks(
                        spool,
                        chunk_frames=task.job_frames(number + 1),
                        pre_roll=following.pre_roll,
                        post_roll=following.post_roll,
                    )
            return True
        finally:
            task.jobs.wait_idle()
            if spool is not None:
                spool.close()

    def _map_stage(
        self,
        task: Task,
        number: int,
        source: Iterator[Chunk],
        spool: Spool | None,
        measurements: dict[int, Any],
    ) -> int | None:
        """Submit every job of a stage and wait for all; return their count, None if stopped."""
        stage = task.stages[number]
        chunk_frames = task.chunk_frames(number)
        jobs = chunks = 0
        for job in source:
            if not task.window.acquire():
                return None
            task.jobs.add()
            self._fair.put(
                task.id,
                functools.partial(
                    self._process, task, stage, job, spool, measurements, chunk_frames
                ),
            )
            self._pool.submit(self._fair.run_next)
            jobs += 1
            chunks += -(-job.body_frames // chunk_frames)
        self._source_ended(task, stage, chunks, last=spool is None)
        if not task.window.drain():
            return None
        return jobs

    def _source_ended(self, task: Task, stage: Stage, chunks: int, *, last: bool) -> None:
        """Record what the end of a stage's input tells: the exact duration, the chunk count."""
        with task.lock:
            if stage is task.stages[0]:
                assert task.decoder is not None, "a running task has its decoder"
                task.duration = task.decoder.frames_read / task.info.sample_rate
                self._check_length(task)
                self._check_silenced(task)
            if last:
                task.chunks_final = chunks

    def _check_silenced(self, task: Task) -> None:
        """Warn when the decoder replaced samples that were not numbers (a broken float file)."""
        count = task.decoder.silenced if task.decoder is not None else 0
        if count:
            message = (
                f"{count} samples of the file were not finite numbers (NaN or infinity) or "
                "were beyond +24 dBFS; they were replaced by silence. The file is probably "
                "damaged, or was written by a program with a bug."
            )
            task.warnings.append({"warning": "not_finite", "message": message})
            task.log.warning("%s", message)

    def _check_length(self, task: Task) -> None:
        """Warn when the audio ended well before its header said (a truncated file)."""
        announced = task.info.duration
        assert task.duration is not None, "the decoder has come to the end"
        if announced and task.duration < TRUNCATED_FRACTION * announced:
            message = (
                f"The file ends after {task.duration:.1f} s, though its header announces "
                f"{announced:.1f} s: it is probably truncated. The result has what decoded."
            )
            task.warnings.append({"warning": "truncated", "message": message})
            task.log.warning("%s", message)

    def _process(
        self,
        task: Task,
        stage: Stage,
        chunk: Chunk,
        spool: Spool | None,
        measurements: dict[int, Any],
        chunk_frames: int,
    ) -> None:
        """Process one job (one or more consecutive chunks, see Stage.chunks_per_job)."""
        try:
            if task.stopping.is_set():
                task.window.release()  # dropped: a stopped task never holds a worker
                return
            started = time.perf_counter()
            source = chunk.block()  # the chunk's pydub segment, as float64 samples
            block = stage.run(source)
            if task.stopping.is_set():
                # Stopped while this chunk ran: drop it here, before any analysis,
                # encoding or storing (the stop flag is the worker's to check).
                task.window.release()
                return
            if spool is not None:
                assert stage.boundary is not None, "a spooled stage ends at a global step"
                measurements[chunk.index] = stage.boundary.measure(block)
                spool.write(block.body_start, block.body)
                self.observer.chunk_processed(time.perf_counter() - started)
                with task.lock:
                    chunks = -(-len(source.body) // chunk_frames)
                    task.work_done += chunks
                    self._progress(task, stage, count=chunks)
                task.window.release()
            else:
                first = chunk.index * stage.chunks_per_job(chunk_frames)
                parts = list(_split(block, chunk_frames * stage.output_rate // stage.input_rate))
                share = (time.perf_counter() - started) / len(parts)  # of the steps' time
                outputs = []
                for number, part in enumerate(parts):
                    output = self._finish_chunk(
                        task, first + number, part, time.perf_counter() - share
                    )
                    self.observer.chunk_processed(output.meta["processing_ms"] / 1000)
                    # The job's window slot is freed with its last chunk.
                    outputs.append(replace(output, ends_job=number == len(parts) - 1))
                self._deliver(task, outputs)
        except Exception as error:
            task.log.exception("chunk %d failed", chunk.index)
            self._fail(task, "processing_failed", f"Chunk {chunk.index} failed: {error}")
        finally:
            task.jobs.done()

    def _finish_chunk(self, task: Task, index: int, block: Block, started: float) -> ChunkOutput:
        """Return the analysis, 16-bit PCM and summary measure of a processed chunk."""
        rate = block.sample_rate
        chunk = analysis.analyse_chunk(block, meter=task.meter, stage=task.stages[-1])
        meta = {
            "task_id": task.id,
            "index": index,
            "start": block.body_start / rate,
            "duration": chunk.frames / rate,
            "sample_rate": rate,
            "channels": block.channels,
            "peak_db": chunk.peak_db,
            "rms_db": chunk.rms_db,
            "waveform": chunk.waveform,
            "spectrum": chunk.spectrum,
            "encoding": "pcm_s16le",
            "frames": chunk.frames,
            "waveform_first": chunk.waveform_first,
        }
        measure, pcm = chunk.measure, chunk.pcm
        meta["processing_ms"] = round((time.perf_counter() - started) * 1000, 2)
        meta["worker"] = threading.current_thread().name
        # Encoded here, in parallel, so that emitting under the task's lock only queues it.
        event = self.broadcaster.prepare("audio_chunk", self._chunk_payload(task, meta, pcm))
        return ChunkOutput(meta, pcm, measure, event)

    def _deliver(self, task: Task, outputs: list[ChunkOutput]) -> None:
        """Put a job's processed chunks in the reorder buffer, and emit every chunk now in order."""
        with task.lock:
            if task.status in TERMINAL:
                task.window.release()
                return
            for output in outputs:
                task.reorder[output.meta["index"]] = output
            while task.next_index in task.reorder:
                ready = task.reorder.pop(task.next_index)
                task.store.append(ready.meta, ready.pcm)
                if task.encoder is not None:
                    task.encoder.advance(task.store.wav.data_bytes)
                task.measures.append(ready.measure)
                task.output_frames += ready.meta["frames"]
                lagging = self.broadcaster.send(
                    ready.event, to=task.room, max_backlog=self.client_backlog
                )
                for sid in lagging:
                    self._pace(task, sid, from_index=task.next_index)
                self._count_emitted(task, ready.meta, ready.pcm)
                task.next_index += 1
                task.work_done += 1
                if ready.ends_job:
                    task.window.release()
                self._progress(task, task.stages[-1], done=task.next_index)

    def _progress(
        self,
        task: Task,
        stage: Stage,
        *,
        count: int = 1,
        done: int | None = None,
        stage_end: bool = False,
    ) -> None:
        """Count chunks done in a stage and tell the subscribers (called under the task's lock).

        processing_progress goes out at most every PROGRESS_SECONDS, and once
        more when a stage ends; never after the terminal event. ``done`` is the
        stage's count when the caller has it (the last stage's: the chunks emitted).
        """
        if task.status in TERMINAL:
            return
        number = next(n for n, candidate in enumerate(task.stages) if candidate is stage)
        if done is not None:
            task.stage_done[number] = done
        elif not stage_end:
            task.stage_done[number] += count
        moment = time.monotonic()
        if not stage_end and moment - task.progress_sent < PROGRESS_SECONDS:
            return
        task.progress_sent = moment
        chunks_done = task.stage_done[number]
        # Like a chunk, never queued for a client that is not reading: it is skipped for it
        # (the next chunk takes that client off the live stream; progress can be missed).
        progress = self.broadcaster.prepare(
            "processing_progress",
            {
                "task_id": task.id,
                "stage": number,
                "stages": len(task.stages),
                "chunks_done": chunks_done,
                "chunks_total": chunks_done if stage_end else task.stage_chunks_total(number),
                "progress": round(task.progress, 4),
                "chunks_emitted": task.next_index,
                "duration": task.duration,
                "elapsed": round(task.elapsed, 3),
            },
        )
        self.broadcaster.send(progress, to=task.room, max_backlog=self.client_backlog)

    def _count_emitted(self, task: Task, meta: dict[str, Any], pcm: bytes) -> None:
        self.observer.chunk_emitted(
            audio_seconds=meta["duration"], audio_bytes=len(pcm) if task.options.stream_audio else 0
        )

    def _chunk_payload(self, task: Task, meta: dict[str, Any], pcm: bytes) -> dict[str, Any]:
        """Return the audio_chunk event's data for a chunk (chunks_total: the best estimate now)."""
        payload = {key: value for key, value in meta.items() if key not in INTERNAL_META}
        payload["chunks_total"] = task.chunks_total
        if task.options.stream_audio:
            payload["audio"] = pcm
        return payload

    # -- ending -----------------------------------------------------------------

    def _end(
        self, task: Task, status: Status, event: str, describe: Callable[[], dict[str, Any]]
    ) -> bool:
        """Move a task to a terminal status and send its terminal event; False if it had ended.

        describe() builds the event's own fields under the task's lock, after
        the last chunk: the counts it reports are final. If describe() itself
        fails (a summary that cannot be computed, say), the task fails instead:
        every task reaches exactly one terminal state, and says so.
        """
        with task.lock:
            if task.status in TERMINAL:
                return False
            task.finished_at = now()
            task.stopping.set()
            task.reorder.clear()
            try:
                task.store.finalize()
                data = describe()
            except Exception as error:
                task.log.exception("ending the task as %s failed", status)
                status, event = Status.FAILED, "processing_error"
                task.summary = None
                task.error = {"error": "processing_failed", "message": f"Finishing failed: {error}"}
                data = dict(task.error)
            task.status = status
            if task.encoder is None and status != Status.FAILED and not task.deleted:
                task.result_path = task.store.path
            data = {**self._terminal_core(task, status), **data}
            task.terminal = (event, data)
            self.observer.task_ended(str(status))
            self.broadcaster.emit(event, data, to=task.room)
        task.window.cancel()
        if task.decoder is not None:
            task.decoder.kill()
        self._finished(task)
        return True

    def _terminal_core(self, task: Task, status: Status) -> dict[str, Any]:
        """The fields every terminal event carries, whatever the ending (called under the lock).

        ``duration`` is the audio emitted (the result's length), ``summary`` and
        ``result_url`` are null where the task has none.
        """
        has_result = (
            status == Status.COMPLETED
            or (status == Status.STOPPED and not task.deleted)
            or task.result_path is not None  # a failed task that kept a partial result
        )
        return {
            "task_id": task.id,
            "status": str(status),
            "chunks_emitted": task.next_index,
            "duration": task.output_frames / task.stages[-1].output_rate,
            "elapsed": round(task.elapsed, 3),
            "summary": task.summary,
            "result_url": f"/tasks/{task.id}/result" if has_result else None,
            "warnings": task.warnings,
        }

    def _complete(self, task: Task) -> None:
        def describe() -> dict[str, Any]:
            task.duration = task.output_frames / task.stages[-1].output_rate
            task.summary = self._summary(task)
            elapsed = task.elapsed
            return {
                "chunks": task.next_index,
                "realtime_factor": round(task.duration / elapsed, 2) if elapsed > 0 else None,
            }

        if self._end(task, Status.COMPLETED, "processing_complete", describe):
            assert task.terminal is not None, "_end() sets it"
            event, data = task.terminal
            if event == "processing_complete":
                task.log.info(
                    "completed: %d chunks, %.1f s of audio in %.2f s (%sx realtime)",
                    data["chunks"], data["duration"], data["elapsed"], data["realtime_factor"],
                )  # fmt: skip

    def _summary(self, task: Task) -> dict[str, Any]:
        summary = task.meter.summary(task.measures)
        reports = [stage.boundary.report() for stage in task.stages if stage.boundary]
        if reports:
            summary["steps"] = reports
        return summary

    def _fail(self, task: Task, code: str, message: str) -> None:
        def describe() -> dict[str, Any]:
            task.error = {"error": code, "message": message}
            return {"error": code, "message": message}

        if self._end(task, Status.FAILED, "processing_error", describe):
            task.log.warning("failed: %s", message)

    def stop(self, task_id: str, *, reason: str = "requested") -> Task:
        """Stop a task now; stopping a stopped task again is fine, a finished one is a conflict."""
        task = self.get(task_id)
        with task.lock:
            status = task.status
        if status in (Status.COMPLETED, Status.FAILED):
            raise TaskConflict(
                f"The task has already {'completed' if status == Status.COMPLETED else 'failed'}; "
                "there is nothing to stop.",
                code="task_finished",
                status=str(status),
            )

        def describe() -> dict[str, Any]:
            if reason == "deleted":
                task.deleted = True  # no result to point at: the files go with the task
            elif task.next_index:  # the summary (its duration too) of what was emitted
                task.summary = self._summary(task)
            return {"reason": reason}

        if self._end(task, Status.STOPPED, "processing_stopped", describe):
            task.log.info("stopped (%s) after %d chunks", reason, task.next_index)
            if status == Status.QUEUED:
                self._retire(task)
        return task

    def _finished(self, task: Task) -> None:
        """Free the task's slot and start waiting tasks."""
        with self._lock:
            self._active.discard(task.id)
            if task in self._queue:
                self._queue.remove(task)
            self._admit_locked()

    def _retire(self, task: Task) -> None:
        """Release what a task no longer needs once no job of it runs: decoder, encoder, upload."""
        task.jobs.wait_idle()
        self._fair.forget(task.id)
        if task.decoder is not None:
            task.decoder.close()
        if task.encoder is not None and task.result_path is None:
            self._settle_encoder(task)
        (task.folder / UPLOAD_NAME).unlink(missing_ok=True)
        with task.lock:
            task.runner_done = True
            deleted = task.deleted
            if not deleted and task.status in TERMINAL:
                save_snapshot(task.folder, task.snapshot(workers=self.workers))
        if deleted:
            remove_folder(task.folder)
            with self._lock:
                self._deleting.discard(task)
        task.retired.set()

    def _settle_encoder(self, task: Task) -> None:
        """Encode a stopped task's partial result; drop a failed or deleted one's."""
        assert task.encoder is not None, "only a task with an encoder has one to settle"
        with task.lock:
            keep = task.status == Status.STOPPED and not task.deleted
        if not keep:
            task.encoder.abort()
            return
        self._finish_encoding(task)

    def result(self, task: Task) -> Path:
        """Return a finished task's result file, waiting for its encoding to end."""
        with task.lock:
            status = task.status
        if status in (Status.QUEUED, Status.PROCESSING):
            raise TaskConflict(
                f"The task is still {status}; the result is ready when it completes or is stopped.",
                code="task_not_ready",
                status=str(status),
            )
        if status == Status.FAILED and task.result_path is None:
            raise TaskConflict(
                "The task failed; it has no result.", code="task_failed", status=str(status)
            )
        if task.result_path is None and not task.retired.wait(RESULT_WAIT_SECONDS):
            raise TaskConflict(
                "The result is still being written. Try again in a moment.",
                code="task_not_ready",
                status=str(status),
            )
        if task.result_path is None:
            raise TaskConflict(
                task.result_error or "The task has no result.",
                code="result_unavailable",
                status=str(status),
            )
        return task.result_path

    def waveform(self, task: Task) -> dict[str, Any]:
        """Return the waveform of a finished task's output in audiowaveform JSON."""
        with task.lock:
            if task.status not in (Status.COMPLETED, Status.STOPPED):
                raise TaskConflict(
                    f"The task is {task.status}; its waveform is ready when it completes or is "
                    "stopped.",
                    code="task_not_ready" if task.status not in TERMINAL else "task_failed",
                    status=str(task.status),
                )
            metas = [task.store.read_meta(index) for index in range(task.next_index)]
        chunks = [(meta["waveform_first"], meta["waveform"]) for meta in metas]
        return analysis.audiowaveform(chunks, sample_rate=task.stages[-1].output_rate)

    def delete(self, task_id: str) -> None:
        """Stop a task if it runs, forget it and delete its files."""
        task = self.get(task_id)
        with contextlib.suppress(TaskConflict):
            self.stop(task_id, reason="deleted")
        with self._lock:
            self._tasks.pop(task.id, None)
        with task.lock:
            task.deleted = True
            task.replays.clear()
            task.store.close()
            remove_now = task.runner_done or task.started_at is None
        if remove_now:
            remove_folder(task.folder)
        else:
            with self._lock:
                self._deleting.add(task)  # its runner removes the folder when it ends
        task.log.info("deleted")

    def shutdown(self, *, timeout: float = 4.0) -> None:
        """Stop every task (reason shutdown), wait for them to settle, and stop the pool.

        Each stopped task finalises its partial result, writes task.json and deletes its
        temporary files as its threads end; this waits for that, at most timeout seconds.
        """
        self._stop_sweeping.set()
        with self._lock:
            self._closed = True
            running = [task for task in self._tasks.values() if task.status not in TERMINAL]
        for task in running:
            with contextlib.suppress(AudioServerError):
                self.stop(task.id, reason="shutdown")
        with self._lock:
            deleting = list(self._deleting)
        deadline = time.monotonic() + timeout
        for task in [*running, *deleting]:
            task.retired.wait(max(0.0, deadline - time.monotonic()))
        for task in deleting:
            remove_folder(task.folder)  # even if its runner did not end in time
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- subscribing ------------------------------------------------------------

    def subscribe(self, task_id: str, sid: str, *, from_index: int = 0) -> Task:
        """Send a client every chunk from from_index on, then the live stream (or the end)."""
        task = self.get(task_id)
        with task.lock:
            if from_index > task.next_index:
                raise BadRequest(
                    f"from_index {from_index} is beyond the {task.next_index} chunks produced "
                    "so far. Ask for a chunk that exists (0 for all).",
                    code="invalid_parameter",
                    parameter="from_index",
                )
            self.broadcaster.leave(sid, task.room)
            generation = task.replays.get(sid, 0) + 1
            task.replays[sid] = generation
        replay = threading.Thread(
            target=self._replay,
            args=(task, sid, from_index, generation),
            name=f"replay-{task.id[:8]}",
            daemon=True,
        )
        replay.start()
        return task

    def _pace(self, task: Task, sid: str, *, from_index: int) -> None:
        """Take a client that reads too slowly off the live stream and replay to it at its pace.

        Called with task.lock held. Without this, every chunk would wait in
        memory for it; the chunks are on disk, so it loses nothing.
        """
        task.log.info("client %s reads slowly; serving it from chunk %d", sid, from_index)
        self.broadcaster.leave(sid, task.room)
        generation = task.replays.get(sid, 0) + 1
        task.replays[sid] = generation
        threading.Thread(
            target=self._replay,
            args=(task, sid, from_index, generation),
            name=f"replay-{task.id[:8]}",
            daemon=True,
        ).start()

    def _writable(self, sid: str) -> bool:
        """Wait until a client has room for more (False if it went away)."""
        while True:
            backlog = self.broadcaster.backlog(sid)
            if backlog is None:
                return self.broadcaster.is_connected(sid)  # a test broadcaster keeps no queue
            if backlog <= self.client_backlog // 2:
                return True
            time.sleep(0.02)  # python-engineio has no "queue drained" signal to wait on

    def unsubscribe(self, task_id: str, sid: str) -> None:
        """Stop sending a task's events to a client."""
        task = self.get(task_id)
        with task.lock:
            task.replays.pop(sid, None)
            self.broadcaster.leave(sid, task.room)

    def _replay(self, task: Task, sid: str, cursor: int, generation: int) -> None:
        """Catch a subscriber up from the store, then hand it to the live room.

        Each chunk is read and sent under the task's lock, so a newer subscribe
        or a delete (which closes the store) cuts the replay off cleanly; when
        the replay has caught up, joining the room happens under the same lock
        as live emission, so nothing falls between the two.
        """
        while self._writable(sid):
            with task.lock:
                if task.replays.get(sid) != generation:
                    return
                if cursor >= task.next_index:
                    self.broadcaster.join(sid, task.room)
                    if task.terminal is not None:
                        event, data = task.terminal
                        self.broadcaster.emit(event, data, to=sid)
                    return
                meta, pcm = task.store.read(cursor)
                payload = self._chunk_payload(task, meta, pcm)
                self.broadcaster.send(self.broadcaster.prepare("audio_chunk", payload), to=sid)
                self._count_emitted(task, meta, pcm)
            cursor += 1


def _split(block: Block, frames: int) -> Iterator[Block]:
    """Cut a job's output into its chunks of frames each, each with the pre-roll it carries.

    Stage.run leaves a job's output with the pre-roll the output meter needs;
    each chunk gets as much of what comes before it (that pre-roll, then the
    chunks before it in the job).
    """
    keep = block.pre
    body_end = len(block.samples) - block.post
    for start in range(block.pre, body_end, frames):
        end = min(start + frames, body_end)
        first = max(0, start - keep)
        yield Block(
            block.samples[first:end],
            block.sample_rate,
            block.start + first,
            start - first,
            0,
            block.final and end == body_end,
        )
