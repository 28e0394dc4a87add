"""A cluster worker: ``python app.py worker`` (``audio-server worker``).

A Celery worker (threads pool, one slot per MAX_ACTIVE_TASKS) whose one
Celery task, ``run_task(task_id)``, runs an uploaded task with today's
``TaskRun`` on this process's pool of WORKERS threads, writing the chunk log
into the task's folder in the shared DATA_DIR. Its ``StreamedChunkLog``
also records every entry in the task's Redis stream and says so on
``audio:events``, which wakes the cursors of every web instance (cluster.py).
The worker renews its claim on each task it runs (a lease) and a key of its
own (its heartbeat), and stops a task when a web instance asks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import redis

from . import config
from .audio.ffmpeg import configure_pydub, find_ffmpeg
from .chunklog import FileChunkLog
from .cluster import (
    EVENTS,
    HEARTBEAT_SECONDS,
    LEASE_SECONDS,
    PROGRESS,
    QUEUE,
    RUN_TASK,
    RUNNING,
    WORKERS,
    celery_app,
    connect,
    log_key,
    owner_key,
    snapshot_json,
    stop_handler,
    stop_key,
    task_key,
    visibility_timeout,
)
from .delivery import Delivery, NullPublisher
from .messages import ProcessingProgressEvent
from .run import NullObserver, PoolRunner, RunContext, TaskRun
from .storage import remove_folder
from .task import TERMINAL, Status, Task, now
from .tasks import too_much_audio

logger = logging.getLogger(__name__)


class StreamedChunkLog(FileChunkLog):
    """The task's chunk log in its folder, each entry also told to the cluster through Redis."""

    def __init__(self, task: Task, client: redis.Redis, *, workers: int) -> None:
        super().__init__(task.store)
        self._task = task
        self._redis = client
        self._workers = workers

    def append(self, meta: dict[str, Any], pcm: bytes) -> int:
        """Write the chunk, then its place in the stream (the task's lock is held)."""
        index = super().append(meta, pcm)
        meta_offset, meta_length, pcm_offset, pcm_length = self.store.locate(index)
        task = self._task
        described = json.loads(snapshot_json(task, workers=self._workers))
        described["task"]["chunks_done"] = index + 1
        pipe = self._redis.pipeline(transaction=False)
        entry: dict[Any, Any] = {  # redis-py wants its own invariant key and value types
            "i": index, "m": meta_offset, "ml": meta_length, "p": pcm_offset, "pl": pcm_length,
            "t": json.dumps(task.chunks_total),
        }  # fmt: skip
        pipe.xadd(log_key(task.id), entry, nomkstream=True)  # a deleted task's is not made again
        pipe.set(task_key(task.id), json.dumps(described), xx=True)
        pipe.publish(EVENTS, task.id)
        pipe.execute()
        return index

    def end(self, event: str, data: dict[str, Any]) -> None:
        """Write the terminal event (the task's lock is held, its status final)."""
        super().end(event, data)
        task = self._task
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(task_key(task.id), snapshot_json(task, workers=self._workers), xx=True)
        pipe.xadd(log_key(task.id), {"end": json.dumps([event, data])}, nomkstream=True)
        pipe.publish(EVENTS, task.id)
        pipe.execute()


class ProgressRelay(Delivery):
    """A worker has no clients: it publishes processing_progress for the web instances' own."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(NullPublisher(), client_backlog=1)
        self._redis = client

    def progress(
        self, task: Task, data: ProcessingProgressEvent, *, stage_end: bool = False
    ) -> None:
        try:
            self._redis.publish(PROGRESS, json.dumps({"data": data, "stage_end": stage_end}))
        except redis.RedisError:  # progress is a hint; the chunks and the end are what count
            task.log.warning("cannot publish processing_progress", exc_info=True)


class Worker:
    """Runs the cluster's tasks in this process (see the module docstring)."""

    def __init__(self, settings: dict[str, Any], *, ffmpeg: str) -> None:
        self.redis = connect(settings["REDIS_URL"])
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.data_dir = Path(settings["DATA_DIR"]).resolve()
        self.workers = settings["WORKERS"]
        self.window = settings["CHUNK_WINDOW"] or max(2, 2 * self.workers)
        self.runner = PoolRunner(self.workers)
        self.context = RunContext(
            runner=self.runner,
            delivery=ProgressRelay(self.redis),
            observer=NullObserver(),
            ffmpeg=ffmpeg,
            workers=self.workers,
            max_audio_seconds=settings["MAX_AUDIO_SECONDS"],
            max_audio_samples=settings["MAX_AUDIO_SAMPLES"],
            stall_seconds=settings["DECODE_STALL_SECONDS"],
            too_much_audio=functools.partial(too_much_audio, limit=settings["MAX_AUDIO_SAMPLES"]),
            on_end=lambda task: None,
            on_retired=lambda task: None,
        )
        self._lock = threading.Lock()
        self._runs: dict[str, TaskRun] = {}
        self._stopped = threading.Event()
        self._listener = stop_handler(self.redis, self.stop, self._stopped)
        self._heart = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._heart.start()

    def _beat(self) -> None:
        """Say this worker lives, and renew its claim on each task it runs."""
        while not self._stopped.is_set():
            with self._lock:
                running = list(self._runs)
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(WORKERS + self.name, now().isoformat(), ex=int(3 * HEARTBEAT_SECONDS))
                for task_id in running:
                    pipe.expire(owner_key(task_id), LEASE_SECONDS)
                pipe.execute()
            except redis.RedisError:
                logger.warning("cannot reach Redis for the heartbeat", exc_info=True)
            self._stopped.wait(HEARTBEAT_SECONDS)

    def stop(self, task_id: str, reason: str) -> None:
        """A web instance asked: stop the task if it runs here."""
        with self._lock:
            run = self._runs.get(task_id)
        if run is not None:
            run.stop(reason)

    def shutdown(self) -> None:
        """SIGTERM: stop every task here (reason shutdown); each keeps its partial result."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.stop("shutdown")

    def close(self) -> None:
        self._stopped.set()
        self.runner.shutdown()

    def run_task(self, task_id: str) -> None:
        """Run one uploaded task to its end, unless it was stopped, deleted or taken."""
        raw = self.redis.get(task_key(task_id))
        if raw is None:
            logger.info("task %s was deleted before a worker took it", task_id)
            return
        snapshot = json.loads(raw)
        if Status(snapshot["task"]["status"]) in TERMINAL:
            return
        if not self.redis.set(owner_key(task_id), self.name, nx=True, ex=LEASE_SECONDS):
            logger.info("task %s is another's (stopped before it started, or running)", task_id)
            return
        task = self._load(task_id, snapshot)
        run = TaskRun(task, self.context)
        with self._lock:
            self._runs[task_id] = run
        try:
            reason = self.redis.get(stop_key(task_id))
            if reason is not None:  # asked before this worker listened for it
                run.stop(str(reason))
            else:
                with task.lock:
                    task.status = Status.PROCESSING
                    task.started_at = now()
                    described = snapshot_json(task, workers=self.workers)
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(task_key(task_id), described, xx=True)
                pipe.sadd(RUNNING, task_id)  # watched for a lost claim from now on
                pipe.execute()
                run.run()  # this Celery thread feeds the task; its jobs run on the pool
        finally:
            with self._lock:
                self._runs.pop(task_id, None)
            self._retired(task)

    def _load(self, task_id: str, snapshot: dict[str, Any]) -> Task:
        """The queued task, from its folder and the snapshot its web instance wrote."""
        task = Task.restore(self.data_dir / task_id, snapshot, window=self.window)
        # Task.restore gives a finished task back; this one has yet to run.
        task.status = Status.QUEUED
        task.chunks_final = None
        task.work_done = 0
        task.stopping.clear()
        task.runner_done = False
        task.retired.clear()
        task.chunk_log = StreamedChunkLog(task, self.redis, workers=self.workers)
        return task

    def _retired(self, task: Task) -> None:
        """Nothing of the task runs here any more: say where its result is, and let it go."""
        with task.lock:
            described = snapshot_json(task, workers=self.workers, retired=True)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(task_key(task.id), described, xx=True)
        pipe.xadd(log_key(task.id), {"retired": "1"}, nomkstream=True)
        pipe.publish(EVENTS, task.id)
        pipe.srem(RUNNING, task.id)
        pipe.delete(owner_key(task.id))
        kept = pipe.execute()[0]
        task.chunk_log.close()
        if not kept:  # its key is gone: deleted (or swept) while it ran here, so its files go
            remove_folder(task.folder)


def main(argv: list[str], *, prog: str) -> int:
    """Start a Celery worker that runs the cluster's tasks (settings as for the server)."""
    from celery.signals import worker_shutting_down

    from .server import configure_logging

    overrides = config.parse_command_line(argv, prog=prog)
    settings = {**config.defaults(), **config.from_environment(), **overrides}
    configure_logging(settings["LOG_LEVEL"])
    if not settings["REDIS_URL"]:
        logger.error("a worker needs the cluster's Redis: set AUDIO_REDIS_URL or --redis-url")
        return 2
    ffmpeg = find_ffmpeg(settings["FFMPEG"])
    configure_pydub(ffmpeg)
    worker = Worker(settings, ffmpeg=ffmpeg)
    app = celery_app(settings["REDIS_URL"], visibility_timeout=visibility_timeout(settings))

    @app.task(name=RUN_TASK)  # type: ignore[untyped-decorator]
    def run_task(task_id: str) -> None:
        worker.run_task(task_id)

    worker_shutting_down.connect(lambda **_: worker.shutdown(), weak=False)
    logger.info(
        "worker %s: %d tasks at once, %d threads, data in %s",
        worker.name, settings["MAX_ACTIVE_TASKS"], worker.workers, worker.data_dir,
    )  # fmt: skip
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={settings['MAX_ACTIVE_TASKS']}",
                "--prefetch-multiplier=1",
                f"--queues={QUEUE}",
                f"--hostname=audio@{worker.name}",
                f"--loglevel={settings['LOG_LEVEL']}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        worker.close()
    return 0
