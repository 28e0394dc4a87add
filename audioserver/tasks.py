"""The scheduler: admission, capacity, stop, delete, results and shutdown of tasks.

``TaskEngine`` is what the HTTP routes, the Socket.IO handlers and the
command line talk to. It checks and admits tasks (capacity, limits, cost,
disk room), starts each admitted task's ``TaskRun`` (run.py) on the
``Runner``, answers for tasks from the ``TaskStore``, and hands subscribers
to ``Delivery`` (delivery.py), which serves each from its own cursor on the
task's chunk log (chunklog.py). ``Retention`` (retention.py) restores tasks
at start and sweeps old ones. Only the runner and delivery start threads.

The seams, each a small Protocol with this process's implementation:
``TaskStore`` (where task state lives), ``ChunkLog`` (where chunks live and
how a waiting cursor is woken), ``Runner`` (where a task runs) and
``Publisher`` (how one packet reaches one client).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from .audio import analysis
from .audio.decode import AudioInfo, Decoder
from .audio.encoders import FORMATS
from .audio.meter import OutputMeter
from .audio.pipeline import Stage
from .delivery import Delivery, NullPublisher, Publisher
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
from .messages import Health, TaskJson
from .retention import Retention
from .run import (
    PROGRESS_SECONDS,
    UPLOAD_NAME,
    NullObserver,
    Observer,
    PoolRunner,
    RunContext,
    Runner,
    TaskRun,
)
from .storage import check_room, expected_bytes, folder_bytes, remove_folder
from .task import TERMINAL, Status, Task, TaskOptions
from .taskstore import MemoryTaskStore, TaskStore

__all__ = [
    "PROGRESS_SECONDS",
    "Observer",
    "Publisher",
    "Status",
    "Task",
    "TaskEngine",
    "TaskOptions",
]

logger = logging.getLogger(__name__)

RESULT_WAIT_SECONDS = 60.0
# CPU nanoseconds per output sample of the per-chunk analysis (levels, waveform,
# spectrum, loudness and true peak, 16-bit PCM), for the cost estimate.
ANALYSIS_COST_NS = 60.0
# Sample rates the server takes: loudness (BS.1770's K-weighting) needs a band up to a
# few kHz, and 768 kHz is the highest rate any audio format in use has.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768_000


def too_much_audio(info: AudioInfo, *, limit: int) -> str:
    """The message of a file that decodes to more than limit samples (MAX_AUDIO_SAMPLES)."""
    hours = limit / (48000 * 2 * 3600)
    seconds = limit / (info.sample_rate * info.channels)
    return (
        f"The audio holds more than {limit:,} samples ({hours:g} h of 48 kHz stereo; "
        f"{seconds:,.0f} s at this file's {info.sample_rate} Hz and {info.channels} "
        "channels), the most one upload may decode to. Split the file, or lower its "
        "sample rate or channel count first."
    )


class TaskEngine:
    """Accepts tasks, runs them on one shared thread pool, and serves their subscribers."""

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
        publisher: Publisher | None = None,
        observer: Observer | None = None,
        store: TaskStore | None = None,
        runner: Runner | None = None,
        retention: bool = True,
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
        self.disk_reserve_bytes = disk_reserve_bytes
        self.max_data_bytes = max_data_bytes
        self.observer: Observer = observer or NullObserver()
        self.delivery = Delivery(publisher or NullPublisher(), client_backlog=client_backlog)
        # The pool runs chunks in parallel; BLAS threading inside each chunk's matrix
        # products would only fight it for the same cores (OpenBLAS spins while it waits).
        threadpool_limits(limits=1, user_api="blas")
        self.runner: Runner = runner or PoolRunner(workers)
        self.store: TaskStore = store or MemoryTaskStore()
        # Starting a decoder and planning take the GIL for a few ms each; twenty uploads
        # at once would hold it long enough to delay every other request.
        self._probing = threading.BoundedSemaphore(max(2, workers))
        self._lock = threading.Lock()
        self._runs: dict[str, TaskRun] = {}  # tasks not yet ended
        self._queue: deque[TaskRun] = deque()
        self._active: set[str] = set()
        self._deleting: set[Task] = set()  # deleted, their folders not yet removed
        self._closed = False
        self._context = RunContext(
            runner=self.runner,
            delivery=self.delivery,
            observer=self.observer,
            ffmpeg=ffmpeg,
            workers=workers,
            max_audio_seconds=max_audio_seconds,
            max_audio_samples=max_audio_samples,
            stall_seconds=stall_seconds,
            too_much_audio=self._too_much_audio,
            on_end=self._finished,
            on_retired=self._retired,
        )
        self.retention = Retention(
            self.store,
            data_dir=self.data_dir,
            window=self.chunk_window,
            workers=workers,
            delete=self.delete,
            ttl_seconds=result_ttl_seconds,
            max_data_bytes=max_data_bytes,
        )
        if retention:  # in cluster mode the folders are the workers' (see cluster.py)
            self.retention.restore()
            self.retention.start(sweep_seconds)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        data_dir: Path,
        ffmpeg: str,
        publisher: Publisher | None = None,
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
            data_dir=data_dir, ffmpeg=ffmpeg, publisher=publisher, observer=observer, **settings
        )

    @property
    def publisher(self) -> Publisher:
        return self.delivery.publisher

    @publisher.setter
    def publisher(self, publisher: Publisher) -> None:
        self.delivery.publisher = publisher

    @property
    def swept(self) -> threading.Event:
        """Set after each periodic sweep."""
        return self.retention.swept

    def sweep(self, *, moment: datetime | None = None) -> list[str]:
        """Delete results past their time to live, then the oldest while over the size cap."""
        return self.retention.sweep(moment=moment)

    # -- looking up -------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        """Return a task, or raise TaskNotFound."""
        task = self.store.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise TaskNotFound(
                "No task has this id; it may have been deleted. Upload the file again."
            )
        return task

    def describe(self, task: Task) -> TaskJson:
        """Return a task's JSON."""
        with task.lock:
            return task.to_json(workers=self.workers)

    def health(self) -> Health:
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
            subscriber = self.publisher.resolve(subscriber)
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
            self.delivery.subscribe(task, subscriber)
        self._enqueue(TaskRun(task, self._context))
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
        return too_much_audio(info, limit=self.max_audio_samples)

    def _check_room(self, info: AudioInfo, stages: list[Stage], options: TaskOptions) -> None:
        """Refuse a task (507) the disk cannot hold besides what running tasks will still write."""
        running = [task for task in self.store.all() if task.status not in TERMINAL]
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
        finished = [task for task in self.store.all() if task.status in TERMINAL]
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

    def _enqueue(self, run: TaskRun) -> None:
        task = run.task
        idle: Decoder | None = None
        run.save_unfinished()  # before any other thread can see the task
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
                self.store.add(task)
                self._runs[task.id] = run
                self._queue.append(run)
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
        self.delivery.forget(task)
        if task.decoder is not None:
            task.decoder.close()
        task.chunk_log.close()
        remove_folder(task.folder)

    def _admit_locked(self) -> None:
        while self._queue and len(self._active) < self.max_active and not self._closed:
            run = self._queue.popleft()
            self._active.add(run.task.id)
            run.start()

    def _finished(self, task: Task) -> None:
        """A task ended: free its slot and start waiting tasks."""
        with self._lock:
            self._active.discard(task.id)
            run = self._runs.pop(task.id, None)
            if run is not None and run in self._queue:
                self._queue.remove(run)
            self._admit_locked()

    def _retired(self, task: Task) -> None:
        """Nothing of a task runs any more (its runner removed a deleted task's folder)."""
        with self._lock:
            self._deleting.discard(task)

    # -- stopping, results, deleting --------------------------------------------------

    def stoppable(self, task_id: str) -> tuple[Task, Status]:
        """A task and its status, if it may be stopped (raise TaskConflict once it has finished)."""
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
        return task, status

    def stop(self, task_id: str, *, reason: str = "requested") -> Task:
        """Stop a task now; stopping a stopped task again is fine, a finished one is a conflict."""
        task, _ = self.stoppable(task_id)
        with self._lock:
            run = self._runs.get(task.id)
        if run is not None:
            run.stop(reason)
        return task

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
            metas = [task.chunk_log.read_meta(index) for index in range(task.next_index)]
        chunks = [(meta["waveform_first"], meta["waveform"]) for meta in metas]
        return analysis.audiowaveform(chunks, sample_rate=task.stages[-1].output_rate)

    def delete(self, task_id: str) -> None:
        """Stop a task if it runs, forget it and delete its files."""
        task = self.get(task_id)
        with contextlib.suppress(TaskConflict):
            self.stop(task_id, reason="deleted")
        self.store.remove(task.id)
        self.delivery.forget(task)
        with task.lock:
            task.deleted = True
            task.chunk_log.close()
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
        self.retention.stop()
        with self._lock:
            self._closed = True
            running = [run.task for run in self._runs.values()]
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
        self.runner.shutdown()

    # -- subscribing ------------------------------------------------------------

    def subscribe(self, task_id: str, sid: str, *, from_index: int = 0) -> Task:
        """Send a client every chunk from from_index on, then the rest as it comes, then the end."""
        task = self.get(task_id)
        length = len(task.chunk_log)
        if from_index > length:
            raise BadRequest(
                f"from_index {from_index} is beyond the {length} chunks produced "
                "so far. Ask for a chunk that exists (0 for all).",
                code="invalid_parameter",
                parameter="from_index",
            )
        self.delivery.subscribe(task, sid, from_index=from_index)
        return task

    def unsubscribe(self, task_id: str, sid: str) -> None:
        """Stop sending a task's events to a client."""
        self.delivery.unsubscribe(self.get(task_id), sid)

    def disconnected(self, sid: str) -> None:
        """A client went away: its cursors end."""
        self.delivery.drop_client(sid)
