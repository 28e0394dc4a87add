"""Cluster mode (REDIS_URL set): web instances and workers sharing one Redis and one DATA_DIR.

A **web instance** (``python app.py``) takes uploads into the shared folder,
keeps each task's state in Redis (``RedisTaskStore``) and queues the task
with Celery; a **worker** (``python app.py worker``, worker.py) runs it with
today's ``TaskRun`` and writes its chunk log into the task's folder, as the
single process does. The seams of the engine are where this plugs in:

- ``TaskStore``: ``RedisTaskStore``. The task JSON and snapshot live at
  ``audio:task:<id>``, written by the web instance at upload and by the
  worker at every chunk and at the end. Any instance answers for any task.
- ``ChunkLog``: ``SharedChunkLog``, a reader of the worker's files. Each
  chunk the worker appends is also an entry of the Redis stream
  ``audio:log:<id>`` (where it lies in the files), then its terminal event;
  the worker publishes the task id on ``audio:events`` after each, and one
  ``LogFollower`` thread per web instance wakes that task's cursors. The PCM
  is read from the shared files: it never goes through Redis, nor through
  Socket.IO's message queue (which cluster mode does not use: each instance
  serves its own clients from the log).
- Stop: the web instance sets ``audio:stop:<id>`` and publishes on
  ``audio:stops``; the worker that owns the task (``audio:owner:<id>``, a
  lease the worker renews) stops its ``TaskRun``. A task no worker has taken
  yet is claimed and ended by the web instance itself.

Keys and channels are all here, with the Celery application both sides use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import redis

from .audio.encode import HEADER_BYTES, WavWriter
from .audio.pipeline import Stage
from .chunklog import LogClosed, WaitableLog
from .exceptions import AtCapacity, TaskConflict
from .messages import Health, ProcessingProgressEvent, TaskJson
from .retention import TASK_FOLDER, Finished, choose_swept
from .run import TaskRun, terminal_core
from .storage import check_room, remove_folder, save_snapshot
from .task import TERMINAL, Status, Task, TaskOptions, now, parse_iso
from .tasks import RESULT_WAIT_SECONDS, TaskEngine

if TYPE_CHECKING:
    from celery import Celery

    from .audio.decode import AudioInfo

logger = logging.getLogger(__name__)

QUEUE = "audio"  # the Celery queue (a Redis list of this name: its length is the queue depth)
RUN_TASK = "audioserver.run_task"  # the Celery task a worker runs for each uploaded task
TASKS = "audio:tasks"  # the ids of every task the cluster keeps
EVENTS = "audio:events"  # pub/sub: the id of a task whose log has a new entry
STOPS = "audio:stops"  # pub/sub: {"task_id", "reason"} for the worker running the task
PROGRESS = "audio:progress"  # pub/sub: a running task's processing_progress data
WORKERS = "audio:worker:"  # + worker name: a key each live worker renews (its heartbeat)
RUNNING = "audio:running"  # the ids of the tasks a worker has started and not yet retired
LEASE_SECONDS = 10  # a worker's claim on a task lasts this long unless renewed
RETIRE_WAIT_SECONDS = 10.0  # DELETE waits this long for the worker that has the task to let go
HEARTBEAT_SECONDS = (
    2.0  # how often workers renew their claims, and web instances look for lost ones
)
WEB_OWNER = "web"  # the owner of a task a web instance ended before any worker took it
SWEEPER = "audio:sweeper"  # the lock of the one web instance that sweeps: its name, with a TTL
IDLE_VIEWS = 16  # finished tasks a web instance keeps its view of, for the requests that follow


def task_key(task_id: str) -> str:
    return f"audio:task:{task_id}"


def log_key(task_id: str) -> str:
    return f"audio:log:{task_id}"


def owner_key(task_id: str) -> str:
    return f"audio:owner:{task_id}"


def stop_key(task_id: str) -> str:
    return f"audio:stop:{task_id}"


def connect(url: str) -> redis.Redis:
    """A client of the cluster's Redis (strings in, strings out)."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def celery_app(url: str, *, visibility_timeout: float) -> Celery:
    """The Celery application of web instances (which queue) and workers (which run).

    Tasks last minutes to hours, so: a worker takes one message at a time per
    free slot (prefetch 1), acknowledges it only when the task has ended
    (acks_late), and gives it back if its process dies (reject_on_worker_lost);
    Redis gives an unacknowledged message to another worker only after the
    visibility timeout, longer than any task. No result backend: the task's
    state is in Redis already, under its own keys.
    """
    from celery import Celery

    app = Celery("audioserver", broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_transport_options={"visibility_timeout": int(visibility_timeout)},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def visibility_timeout(config: Any) -> float:
    """Longer than the longest task: twice the longest audio accepted, plus an hour."""
    return 2 * float(config["MAX_AUDIO_SECONDS"]) + 3600


def snapshot_json(task: Task, *, workers: int, retired: bool = False) -> str:
    """The task's snapshot (task.json's content) as Redis keeps it."""
    return json.dumps({**task.snapshot(workers=workers), "retired": retired})


class SharedChunkLog(WaitableLog):
    """A task's chunk log as a web instance reads it: the worker's files, indexed by a stream.

    The stream's entries say where each chunk lies in chunks.jsonl and
    result.wav, so nothing is read from the files before the worker has
    written it. ``refresh`` reads the entries not yet seen; the instance's
    ``LogFollower`` calls it when the worker says the log grew, which wakes
    the cursors waiting here.
    """

    def __init__(self, client: redis.Redis, task: Task) -> None:
        super().__init__()
        self._redis = client
        self._key = log_key(task.id)
        self._folder = task.folder
        self._retired = task.retired
        self._entries: list[tuple[int, int, int, int]] = []
        self._last = "0-0"
        self._fds: tuple[int, int] | None = None
        self._close_files: weakref.finalize[Any, Any] | None = None
        self.pcm_bytes = 0  # of the chunks in the stream
        self.meta_bytes = 0
        self.chunks_total: int | None = None
        self._refreshing = threading.Lock()
        self.refresh()

    def refresh(self) -> bool:
        """Take in the stream's new entries and wake the waiting readers; True if retired now."""
        with self._refreshing:
            # decode_responses: ids and fields are str (redis-py's hints say bytes | str | None).
            entries = cast(
                list[tuple[str, dict[str, str]]],
                self._redis.xrange(self._key, min=f"({self._last}"),
            )
            if not entries:
                return False
            was_retired = self._retired.is_set()
            with self._changed:
                for entry_id, fields in entries:
                    self._last = entry_id
                    if "end" in fields:
                        event, data = json.loads(fields["end"])
                        self._terminal = (event, data)
                    elif "retired" in fields:
                        self._retired.set()
                    elif "i" in fields:
                        offsets = (int(fields["m"]), int(fields["ml"]), int(fields["p"]),
                                   int(fields["pl"]))  # fmt: skip
                        self._entries.append(offsets)
                        self.pcm_bytes = offsets[2] + offsets[3]
                        self.meta_bytes = offsets[0] + offsets[1]
                        self.chunks_total = json.loads(fields["t"])
                self._changed.notify_all()
            return self._retired.is_set() and not was_retired

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def finished(self) -> bool:
        """The task has ended and its worker let it go: nothing more will come."""
        return self._terminal is not None and self._retired.is_set()

    def append(self, meta: dict[str, Any], pcm: bytes) -> int:
        raise LogClosed("a web instance does not write chunks: the worker does")

    def end(self, event: str, data: dict[str, Any]) -> None:
        """End the log of a task no worker took (the web instance stopped it)."""
        self._redis.xadd(self._key, {"end": json.dumps([event, data])})
        self._redis.publish(EVENTS, self._key.removeprefix("audio:log:"))
        self.refresh()

    def _files(self) -> tuple[int, int]:
        if self._fds is None:
            meta = os.open(self._folder / "chunks.jsonl", os.O_RDONLY)
            self._fds = (meta, os.open(self._folder / "result.wav", os.O_RDONLY))
            # A view let go (RedisTaskStore.prune) is not closed: a request may still read
            # it. Its files close when the last of them lets go of it.
            self._close_files = weakref.finalize(self, close_files, self._fds)
        return self._fds

    def read(self, index: int) -> tuple[dict[str, Any], bytes]:
        with self._changed:
            if self._closed:
                raise LogClosed("the log was closed")
            meta_offset, meta_length, pcm_offset, pcm_length = self._entries[index]
            meta_fd, wav_fd = self._files()
            meta: dict[str, Any] = json.loads(os.pread(meta_fd, meta_length, meta_offset))
            return meta, os.pread(wav_fd, pcm_length, HEADER_BYTES + pcm_offset)

    def read_meta(self, index: int) -> dict[str, Any]:
        return self.read(index)[0]

    def wait(self, index: int, *, timeout: float) -> bool:
        """Wait until entry index exists (a chunk, or the end); False on timeout."""
        if super().wait(index, timeout=timeout):
            return True
        self.refresh()  # a wake-up lost while the follower's connection was re-established
        with self._changed:
            return self._holds(index)

    def finalize(self) -> None:
        pass  # the worker's files are the worker's

    def close(self) -> None:
        with self._changed:
            if not self._closed:
                self._closed = True
                if self._close_files is not None:
                    self._close_files()
            self._changed.notify_all()


def close_files(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


def keep_chunks(
    folder: Path, *, chunks: int, pcm_bytes: int, meta_bytes: int, stages: list[Stage]
) -> None:
    """Cut a lost worker's files to the chunks its stream has, and make result.wav whole."""
    last = stages[-1]
    wav = WavWriter(folder / "result.wav", sample_rate=last.output_rate,
                    channels=last.output_channels, existing=True)  # fmt: skip
    try:
        wav.truncate(pcm_bytes)
    finally:
        wav.close()
    os.truncate(folder / "chunks.jsonl", meta_bytes)


class LogFollower:
    """One thread per web instance: wakes a task's cursors when its worker says its log grew.

    It also passes the workers' processing_progress on (``on_progress``), in
    the order the worker published it among the log's wake-ups.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._lock = threading.Lock()
        self._logs: dict[str, SharedChunkLog] = {}
        self._stopped = threading.Event()
        self.on_progress: Callable[[dict[str, Any], bool], None] = lambda data, stage_end: None
        self.on_retired: Callable[[str], None] = lambda task_id: None  # a log's task let go
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(EVENTS, PROGRESS)
        self._thread = threading.Thread(target=self._follow, name="log-follower", daemon=True)
        self._thread.start()

    def watch(self, task_id: str, log: SharedChunkLog) -> None:
        with self._lock:
            self._logs[task_id] = log

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._logs.pop(task_id, None)

    def watching(self) -> int:
        """How many logs this instance follows."""
        with self._lock:
            return len(self._logs)

    def _follow(self) -> None:
        while not self._stopped.is_set():
            try:
                message = self._pubsub.get_message(timeout=1.0)
            except (redis.ConnectionError, ValueError):
                if self._stopped.is_set():
                    return
                logger.warning("lost the connection to Redis; following again", exc_info=True)
                self._stopped.wait(1.0)
                continue
            if message is None:
                continue
            if message["channel"] == PROGRESS:
                progress = json.loads(message["data"])
                if "data" not in progress:  # a worker of the version before: the bare event
                    progress = {"data": progress, "stage_end": False}
                self.on_progress(progress["data"], progress["stage_end"])
                continue
            with self._lock:
                log = self._logs.get(str(message["data"]))
            if log is not None:
                try:
                    retired = log.refresh()
                except redis.RedisError:
                    logger.warning("cannot read the log of task %s", message["data"])
                    continue
                if retired:
                    self.on_retired(str(message["data"]))

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=3)
        with contextlib.suppress(redis.RedisError):
            self._pubsub.close()


def apply_snapshot(task: Task, snapshot: dict[str, Any]) -> None:
    """Bring a web instance's copy of a task up to its latest state in Redis."""
    described = snapshot["task"]
    folder = task.folder
    with task.lock:
        task.status = Status(described["status"])
        task.started_at, task.finished_at = (
            parse_iso(described[key]) for key in ("started_at", "finished_at")
        )
        task.error, task.summary = described["error"], described["summary"]
        task.warnings = described.get("warnings", [])
        task.duration = described["duration"]
        task.next_index = described["chunks_done"]
        total = described["chunks_total"]
        task.chunks_final = total if task.status in TERMINAL else None
        task.result_path = folder / snapshot["result"] if snapshot["result"] else None
        task.result_error = snapshot["result_error"]
        if snapshot.get("retired"):
            task.retired.set()


class RedisTaskStore:
    """Every task of the cluster, in Redis; each instance keeps a view of those it serves.

    A view is the instance's ``Task`` with its ``SharedChunkLog``. That of a
    running task, or of one a cursor here reads, is kept; those of finished
    tasks nobody here reads are let go past the ``IDLE_VIEWS`` most recently
    used, and made again from Redis and the folder when asked for. So an
    instance's memory follows what it serves now, not every task it ever served.
    """

    def __init__(self, client: redis.Redis, follower: LogFollower, *, data_dir: Path) -> None:
        self._redis = client
        self._follower = follower
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self._tasks: OrderedDict[str, Task] = OrderedDict()  # least recently used first
        self.in_use: Callable[[str], int] = lambda task_id: 0  # cursors reading a task here

    def open_log(self, task: Task) -> SharedChunkLog:
        """A web instance's reader of a task's log, woken by the follower."""
        log = SharedChunkLog(self._redis, task)
        self._follower.watch(task.id, log)
        return log

    def cached(self, task_id: str) -> Task | None:
        """The view of a task this instance has already, without asking Redis."""
        with self._lock:
            return self._tasks.get(task_id)

    def views(self) -> int:
        """How many tasks this instance keeps a view of."""
        with self._lock:
            return len(self._tasks)

    def add(self, task: Task) -> None:
        with self._lock:
            self._tasks[task.id] = task
        pipe = self._redis.pipeline()
        pipe.set(task_key(task.id), snapshot_json(task, workers=0))
        pipe.sadd(TASKS, task.id)
        pipe.xadd(log_key(task.id), {"created": "1"})  # the worker appends, never creates
        pipe.execute()
        self.prune()

    def snapshot(self, task_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(task_key(task_id))
        snapshot: dict[str, Any] | None = json.loads(raw) if raw else None
        return snapshot

    def get(self, task_id: str) -> Task | None:
        snapshot = self.snapshot(task_id)
        if snapshot is None:  # deleted, maybe by another instance: its view goes too
            self.let_go(task_id)
            return None
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                self._tasks.move_to_end(task_id)
        if task is None:
            task = self._load(task_id, snapshot)
            if task is None:
                return None
        apply_snapshot(task, snapshot)
        self.prune()
        return task

    def _load(self, task_id: str, snapshot: dict[str, Any]) -> Task | None:
        """A task this instance has no view of, read back from its folder and Redis."""
        try:
            # Where each chunk lies comes from the stream, not from reading chunks.jsonl.
            task = Task.restore(self._data_dir / task_id, snapshot, window=1, indexed=False)
        except Exception:  # its folder is gone: deleted meanwhile
            logger.info("task %s has no folder here", task_id)
            return None
        task.store.close()  # the worker's files: this instance reads them by the stream
        task.retired.clear()
        task.chunk_log = self.open_log(task)
        with self._lock:
            return self._tasks.setdefault(task_id, task)

    def prune(self) -> None:
        """Let go of the views of finished tasks no cursor here reads, past IDLE_VIEWS of them."""
        with self._lock:
            idle = [
                task
                for task in self._tasks.values()  # least recently used first
                if isinstance(task.chunk_log, SharedChunkLog)
                and task.chunk_log.finished
                and not self.in_use(task.id)
            ]
            gone = idle[: max(0, len(idle) - IDLE_VIEWS)]
            for task in gone:
                del self._tasks[task.id]
        for task in gone:
            self._follower.forget(task.id)

    def let_go(self, task_id: str) -> None:
        """Forget this instance's view of a task (Redis is not changed)."""
        with self._lock:
            self._tasks.pop(task_id, None)
        self._follower.forget(task_id)

    def remove(self, task_id: str) -> None:
        self.let_go(task_id)
        pipe = self._redis.pipeline()
        pipe.delete(task_key(task_id), log_key(task_id), stop_key(task_id), owner_key(task_id))
        pipe.srem(TASKS, task_id)
        pipe.srem(RUNNING, task_id)
        pipe.execute()

    def all(self) -> list[Task]:
        found = (self.get(str(task_id)) for task_id in self._redis.smembers(TASKS))
        return [task for task in found if task is not None]


# Renew the lock only if it is still ours: the sweeper of an instance that stalled past the
# lock's time must not take it back from the one that replaced it.
RENEW_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class ClusterSweeper:
    """Sweeps the cluster's finished tasks (RESULT_TTL_HOURS, MAX_DATA_MB), one instance at a time.

    The instance that holds ``audio:sweeper`` sweeps; it renews the lock at
    each sweep, and the lock lasts three sweeps, so when that instance dies
    another takes the lock and sweeps in its place. A sweep deletes, across the
    cluster, the tasks that ended (and whose worker let them go) longer ago than
    the time to live, then the oldest while the shared folder is over its cap:
    their keys in Redis and their folders. Folders no task in Redis names (Redis
    lost its data, say) go once they are older than the time to live (an hour
    at least: a folder being uploaded into has no task in Redis yet).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        data_dir: Path,
        ttl_seconds: float,
        max_data_bytes: int,
        sweep_seconds: float,
        forget: Callable[[str], None],
    ) -> None:
        self._redis = client
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.data_dir = data_dir
        self.ttl_seconds = ttl_seconds
        self.max_data_bytes = max_data_bytes
        self.lock_ms = int(1000 * max(3 * sweep_seconds, 10.0))
        self._forget = forget
        self._renew = client.register_script(RENEW_IF_OURS)
        self._release = client.register_script(RELEASE_IF_OURS)
        self.swept = threading.Event()  # set after each sweep this instance makes

    def leads(self) -> bool:
        """Take or keep the sweeper's lock; False while another instance holds it."""
        if self._redis.set(SWEEPER, self.name, nx=True, px=self.lock_ms):
            return True
        return bool(self._renew(keys=[SWEEPER], args=[self.name, self.lock_ms]))

    def sweep(self, *, moment: datetime | None = None) -> list[str] | None:
        """Delete what is past its time or over the cap; None if another instance sweeps."""
        if not self.leads():
            return None
        moment = moment or now()
        known = {str(task_id) for task_id in self._redis.smembers(TASKS)}
        swept = choose_swept(
            self._finished(sorted(known)),
            moment=moment,
            ttl_seconds=self.ttl_seconds,
            max_data_bytes=self.max_data_bytes,
            data_dir=self.data_dir,
        )
        for task in swept:
            self._forget(task.task_id)
        orphans = self._orphans(known, moment=moment)
        for folder in orphans:
            remove_folder(folder)
        if swept or orphans:
            logger.info("swept %d finished tasks and %d folders of no task", len(swept),
                        len(orphans))  # fmt: skip
        self.swept.set()
        return [task.task_id for task in swept]

    def _finished(self, task_ids: list[str]) -> list[Finished]:
        """The tasks that have ended and that no worker holds any more, from their snapshots."""
        raws = self._redis.mget([task_key(task_id) for task_id in task_ids]) if task_ids else []
        finished = []
        for task_id, raw in zip(task_ids, raws, strict=True):
            if raw is None:  # its keys went, its id stayed behind
                self._redis.srem(TASKS, task_id)
                continue
            snapshot = json.loads(raw)
            described = snapshot["task"]
            if Status(described["status"]) in TERMINAL and snapshot.get("retired"):
                ended = parse_iso(described["finished_at"] or described["created_at"])
                assert ended is not None, "a task has a creation time"
                finished.append(Finished(task_id, ended, self.data_dir / task_id))
        return finished

    def _orphans(self, known: set[str], *, moment: datetime) -> list[Path]:
        """Task folders that no task in Redis names, older than the time to live."""
        grace = max(self.ttl_seconds, 3600.0)
        orphans = []
        for folder in self.data_dir.iterdir():
            if not TASK_FOLDER.fullmatch(folder.name) or folder.name in known:
                continue
            with contextlib.suppress(OSError):
                changed = datetime.fromtimestamp(folder.stat().st_mtime, UTC)
                if (moment - changed).total_seconds() > grace:
                    orphans.append(folder)
        return orphans

    def run(self, seconds: float, stopped: threading.Event) -> None:
        """Sweep every so many seconds while this instance holds the lock, until stopped."""
        while not stopped.wait(seconds):
            try:
                self.sweep()
            except Exception:  # the sweeper must outlive a bad day (Redis away, say)
                logger.exception("sweep failed")

    def release(self) -> None:
        """Let another instance sweep (at shutdown)."""
        with contextlib.suppress(redis.RedisError):
            self._release(keys=[SWEEPER], args=[self.name])


class ClusterEngine(TaskEngine):
    """The scheduler of a web instance: tasks queued with Celery, state and logs in Redis."""

    def __init__(self, *, redis_url: str, **settings: Any) -> None:
        self.redis = connect(redis_url)
        self.follower = LogFollower(self.redis)
        data_dir = Path(settings["data_dir"])
        store = RedisTaskStore(self.redis, self.follower, data_dir=data_dir)
        self.cluster_store = store
        longest = {"MAX_AUDIO_SECONDS": settings.get("max_audio_seconds", 4 * 3600.0)}
        self.celery = celery_app(redis_url, visibility_timeout=visibility_timeout(longest))
        super().__init__(store=store, retention=False, **settings)
        self.follower.on_progress = self._progress
        # Views of finished tasks go when their last cursor here ends, or when they end.
        store.in_use = self.delivery.serving
        self.delivery.on_idle = lambda task: store.prune()
        self.follower.on_retired = lambda task_id: store.prune()
        self._reaping = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="reaper", daemon=True)
        self._reaper.start()
        sweep_seconds = float(settings.get("sweep_seconds", 60.0))
        self.sweeper = ClusterSweeper(
            self.redis,
            data_dir=self.data_dir,
            ttl_seconds=self.retention.ttl_seconds,
            max_data_bytes=self.max_data_bytes,
            sweep_seconds=sweep_seconds,
            forget=self._forget_finished,
        )
        if sweep_seconds > 0:
            threading.Thread(target=self.sweeper.run, args=(sweep_seconds, self._reaping),
                             name="sweeper", daemon=True).start()  # fmt: skip

    @property
    def swept(self) -> threading.Event:
        """Set after each sweep this instance makes (it holds the cluster's sweeper lock)."""
        return self.sweeper.swept

    def sweep(self, *, moment: datetime | None = None) -> list[str]:
        """Sweep the cluster's finished tasks if no other instance does (see ClusterSweeper)."""
        return self.sweeper.sweep(moment=moment) or []

    def _forget_finished(self, task_id: str) -> None:
        """Delete a finished task everywhere: its keys, its folder, and this instance's view."""
        task = self.cluster_store.cached(task_id)
        self.cluster_store.remove(task_id)
        if task is not None:
            self.delivery.forget(task)
            task.chunk_log.close()
        remove_folder(self.data_dir / task_id)

    def _progress(self, data: dict[str, Any], stage_end: bool) -> None:
        """A worker's processing_progress, for this instance's subscribers of the task."""
        task = self.cluster_store.cached(data["task_id"])
        if task is not None:  # the event as published
            self.delivery.progress(task, cast(ProcessingProgressEvent, data), stage_end=stage_end)

    # -- workers lost -------------------------------------------------------------------

    def _reap(self) -> None:
        """Fail the tasks whose worker stopped renewing its claim (killed, or cut off)."""
        while not self._reaping.wait(HEARTBEAT_SECONDS):
            try:
                for task_id in self.redis.smembers(RUNNING):
                    self._reap_task(str(task_id))
            except redis.RedisError:
                logger.warning("cannot reach Redis to look for lost workers", exc_info=True)

    def _reap_task(self, task_id: str) -> None:
        if self.redis.exists(owner_key(task_id)):
            return  # its worker lives
        # The claim is the arbiter: one instance reaps, and a retried message finds it taken.
        if not self.redis.set(owner_key(task_id), "reaper", nx=True, ex=24 * 3600):
            return
        task = self.get(task_id) if self.redis.exists(task_key(task_id)) else None
        if task is None or task.status in TERMINAL:
            self.redis.srem(RUNNING, task_id)
            return
        log = task.chunk_log
        assert isinstance(log, SharedChunkLog), "a cluster task's log is the shared one"
        log.refresh()
        message = (
            f"The worker processing the task stopped answering after {len(log)} chunks "
            "(its machine or process died); the chunks it sent are kept. Upload the file again "
            "to process it whole."
        )
        keep_chunks(task.folder, chunks=len(log), pcm_bytes=log.pcm_bytes,
                    meta_bytes=log.meta_bytes, stages=task.stages)  # fmt: skip
        with task.lock:
            task.status = Status.FAILED
            task.finished_at = now()
            task.error = {"error": "worker_lost", "message": message}
            task.next_index = len(log)
            task.work_done = len(log) * len(task.stages)  # its progress: what it emitted
            last = task.stages[-1]
            task.output_frames = log.pcm_bytes // (2 * last.output_channels)
            task.result_path = task.folder / "result.wav"
            data = {**terminal_core(task, Status.FAILED), **task.error}
            snapshot = snapshot_json(task, workers=0, retired=True)
        self.redis.set(task_key(task_id), snapshot, xx=True)
        save_snapshot(task.folder, json.loads(snapshot))
        log.end("processing_error", data)
        pipe = self.redis.pipeline()
        pipe.xadd(log_key(task_id), {"retired": "1"})
        pipe.srem(RUNNING, task_id)
        pipe.execute()
        task.log.warning("failed: its worker was lost after %d chunks", len(log))

    # -- accepting --------------------------------------------------------------

    def _check_capacity_locked(self) -> None:
        if self._closed:
            raise AtCapacity("The server is shutting down. Try again in a moment.", retry_after=10)
        waiting = self.queue_depth()
        if waiting >= self.max_queued:
            raise AtCapacity(
                f"The cluster is at capacity ({waiting} tasks waiting for a worker). "
                "Try again in a few seconds.",
                retry_after=5,
            )

    def queue_depth(self) -> int:
        """Tasks queued for the workers and not yet taken by one."""
        return int(self.redis.llen(QUEUE))

    def _check_room(self, info: AudioInfo, stages: list[Stage], options: TaskOptions) -> None:
        # The shared folder's room for this task (MAX_DATA_MB is not enforced across machines).
        needed = self._expected_bytes(info, stages, options)
        check_room(self.data_dir, needed, reserve=self.disk_reserve_bytes)

    def _prepare(self, task_id: str, folder: Path, filename: str, options: TaskOptions) -> Task:
        task = super()._prepare(task_id, folder, filename, options)
        task.chunk_log = self.cluster_store.open_log(task)
        return task

    def _enqueue(self, run: TaskRun) -> None:
        task = run.task
        if task.decoder is not None:  # the worker starts its own
            task.decoder.close()
            task.decoder = None
        task.store.close()  # the worker opens the files again
        try:
            with self._lock:
                self._check_capacity_locked()
        except AtCapacity:
            self._discard_unstarted(task)
            raise
        save_snapshot(task.folder, task.snapshot(workers=0))
        self.store.add(task)
        self.celery.send_task(RUN_TASK, args=[task.id], queue=QUEUE)
        task.log.info(
            "accepted %r: %s, %d Hz, %d ch, %.1f s, pipeline %r; queued for the workers",
            task.filename, task.info.codec, task.info.sample_rate, task.info.channels,
            task.info.duration or -1, str(task.options.pipeline),
        )  # fmt: skip

    def _discard_unstarted(self, task: Task) -> None:
        self.delivery.forget(task)
        if task.decoder is not None:
            task.decoder.close()
        task.chunk_log.close()
        self.cluster_store.remove(task.id)
        remove_folder(task.folder)

    # -- looking up -------------------------------------------------------------

    def describe(self, task: Task) -> TaskJson:
        """The task's JSON as its worker last wrote it."""
        snapshot = self.cluster_store.snapshot(task.id)
        if snapshot is None:
            return super().describe(task)
        described: TaskJson = snapshot["task"]  # Task.to_json's, through JSON
        return described

    def health(self) -> Health:
        try:
            self.redis.ping()
            workers = sum(1 for _ in self.redis.scan_iter(f"{WORKERS}*"))
            queued = self.queue_depth()
            running = int(self.redis.scard(RUNNING))
            reachable = True
        except redis.RedisError:
            workers, queued, running, reachable = 0, 0, 0, False
        return {
            "status": "ok" if reachable else "degraded",
            "workers": self.workers,
            "active_tasks": running,
            "queued_tasks": queued,
            "redis": "ok" if reachable else "unreachable",
            "cluster_workers": workers,
        }

    # -- stopping, results, deleting -------------------------------------------------

    def stop(self, task_id: str, *, reason: str = "requested") -> Task:
        """Stop a task wherever it runs: its worker is told; a task still queued ends here."""
        task, status = self.stoppable(task_id)
        if status == Status.STOPPED:
            return task
        self.redis.set(stop_key(task.id), reason, ex=24 * 3600)
        if self.redis.set(owner_key(task.id), WEB_OWNER, nx=True, ex=24 * 3600):
            self._stop_unstarted(task, reason)  # no worker took it, and none will
        else:
            self.redis.publish(STOPS, json.dumps({"task_id": task.id, "reason": reason}))
        return task

    def _stop_unstarted(self, task: Task, reason: str) -> None:
        with task.lock:
            task.status = Status.STOPPED
            task.finished_at = now()
            task.stopping.set()
            task.deleted = reason == "deleted"
            if not task.deleted:
                task.result_path = task.folder / "result.wav"
            data = {**terminal_core(task, Status.STOPPED), "reason": reason}
            snapshot = snapshot_json(task, workers=0, retired=True)
        self.redis.set(task_key(task.id), snapshot, xx=True)
        if not task.deleted:
            save_snapshot(task.folder, json.loads(snapshot))
        task.chunk_log.end("processing_stopped", data)
        self.redis.xadd(log_key(task.id), {"retired": "1"})
        task.retired.set()
        task.log.info("stopped (%s) before a worker took it", reason)

    def result(self, task: Task) -> Path:
        with task.lock:
            waiting = task.status in TERMINAL and task.result_path is None
        if waiting and task.retired.wait(RESULT_WAIT_SECONDS):
            task = self.get(task.id)  # the worker has written where the result is
        return super().result(task)

    def delete(self, task_id: str) -> None:
        """Stop the task and forget it everywhere; its folder goes once nothing writes to it.

        A worker that has the task (stopped just now, or ended a moment ago and
        letting it go) retires it promptly: the answer waits for that, so the
        files are gone when it comes. A worker that does not let go in time
        removes them itself when it does (it finds the task's key gone).
        """
        task = self.get(task_id)
        with contextlib.suppress(TaskConflict):
            self.stop(task_id, reason="deleted")
        owner = self.redis.get(owner_key(task.id))
        held = owner not in (None, WEB_OWNER)
        if held and not task.retired.wait(RETIRE_WAIT_SECONDS):
            task.log.warning(
                "deleted, but worker %s did not let the task go in %g s: it removes the files "
                "when it does", owner, RETIRE_WAIT_SECONDS,
            )  # fmt: skip
        self.cluster_store.remove(task.id)
        self.delivery.forget(task)
        task.chunk_log.close()
        if not held or task.retired.is_set():
            remove_folder(task.folder)
        task.log.info("deleted")

    def shutdown(self, *, timeout: float = 4.0) -> None:
        self._reaping.set()
        self.sweeper.release()
        super().shutdown(timeout=timeout)
        self.follower.stop()
        self.redis.close()


def stop_handler(
    client: redis.Redis, stop: Callable[[str, str], None], stopped: threading.Event
) -> threading.Thread:
    """A worker's thread that stops its tasks when a web instance asks (see worker.py)."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(STOPS)

    def listen() -> None:
        while not stopped.is_set():
            try:
                message = pubsub.get_message(timeout=1.0)
            except (redis.ConnectionError, ValueError):
                if stopped.is_set():
                    return
                logger.warning("lost the connection to Redis; listening again", exc_info=True)
                stopped.wait(1.0)
                continue
            if message is not None:
                request = json.loads(message["data"])
                stop(request["task_id"], request["reason"])
        pubsub.close()

    thread = threading.Thread(target=listen, name="stop-listener", daemon=True)
    thread.start()
    return thread
