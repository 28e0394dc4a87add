"""Retention: finished tasks taken back at start, interrupted ones kept as failed, old ones swept.

At start, every task folder with a readable task.json is restored (finished
tasks are served again: status, result, replay); a task a crash interrupted
becomes ``failed`` (``server_restarted``) with the chunks it had emitted as
its partial result; a folder without task.json was half-created and goes.
While the server runs, a sweeper deletes results past their time to live,
then the oldest while the data folder is over its cap.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .chunklog import FileChunkLog
from .exceptions import TaskNotFound
from .run import UPLOAD_NAME, terminal_core
from .storage import folder_bytes, load_snapshot, remove_folder, save_snapshot
from .task import TERMINAL, Status, Task, now
from .taskstore import TaskStore

logger = logging.getLogger("audioserver.tasks")

TASK_FOLDER = re.compile(r"[0-9a-f]{32}")  # uuid4 hex: the only folders the engine owns


@dataclass(frozen=True)
class Finished:
    """A finished task, as the sweeper sees it."""

    task_id: str
    ended: datetime  # when it finished (when it was created, if it never started)
    folder: Path


def choose_swept(
    finished: list[Finished],
    *,
    moment: datetime,
    ttl_seconds: float,
    max_data_bytes: int,
    data_dir: Path,
) -> list[Finished]:
    """The finished tasks to delete: past their time to live, then the oldest over the cap.

    The cap (max_data_bytes, 0 for none) is on the whole data folder: the oldest
    finished tasks go until what is left fits under it.
    """
    finished = sorted(finished, key=lambda task: task.ended)
    swept = [task for task in finished if (moment - task.ended).total_seconds() > ttl_seconds]
    if max_data_bytes:
        excess = folder_bytes(data_dir) - max_data_bytes
        excess -= sum(folder_bytes(task.folder) for task in swept)
        for task in finished:  # oldest first
            if excess <= 0:
                break
            if task not in swept:
                excess -= folder_bytes(task.folder)
                swept.append(task)
    return swept


class Retention:
    """Restores the tasks of an earlier run, and sweeps finished ones past their time."""

    def __init__(
        self,
        store: TaskStore,
        *,
        data_dir: Path,
        window: int,
        workers: int,
        delete: Callable[[str], None],
        ttl_seconds: float,
        max_data_bytes: int,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.window = window
        self.workers = workers
        self.delete = delete
        self.ttl_seconds = ttl_seconds
        self.max_data_bytes = max_data_bytes
        self._stop = threading.Event()
        self.swept = threading.Event()  # set after each periodic sweep

    def restore(self) -> None:
        """Take back the finished tasks of an earlier run; delete what a crash left half-written."""
        for part in (self.data_dir / "uploads").glob("*.part"):
            part.unlink(missing_ok=True)
        restored, removed, interrupted = 0, 0, 0
        for folder in sorted(self.data_dir.iterdir()):
            if not (folder.is_dir() and TASK_FOLDER.fullmatch(folder.name)):
                continue  # not ours: leave it alone
            snapshot = load_snapshot(folder)
            try:
                task = Task.restore(folder, snapshot, window=self.window) if snapshot else None
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
            self.store.add(task)
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
        task.chunk_log = FileChunkLog(task.store)  # the log of what survived
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
        task.chunk_log.end("processing_error", {**terminal_core(task, Status.FAILED), **task.error})
        save_snapshot(task.folder, task.snapshot(workers=self.workers))
        task.log.warning("interrupted by the last stop of the server: now failed; %s", kept)

    def sweep(self, *, moment: datetime | None = None) -> list[str]:
        """Delete results past their time to live, then the oldest while over the size cap."""
        finished = [
            Finished(task.id, task.finished_at or task.created_at, task.folder)
            for task in self.store.all()
            if task.status in TERMINAL
        ]
        swept = choose_swept(
            finished,
            moment=moment or now(),
            ttl_seconds=self.ttl_seconds,
            max_data_bytes=self.max_data_bytes,
            data_dir=self.data_dir,
        )
        for task in swept:
            with contextlib.suppress(TaskNotFound):
                self.delete(task.task_id)
        if swept:
            logger.info("swept %d finished tasks", len(swept))
        return [task.task_id for task in swept]

    def start(self, seconds: float) -> None:
        """Sweep every so many seconds, in a thread of its own (0: never)."""
        if seconds > 0:
            threading.Thread(
                target=self._sweep_every, args=(seconds,), name="sweeper", daemon=True
            ).start()

    def _sweep_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.sweep()
            except Exception:  # the sweeper must outlive a bad day
                logger.exception("sweep failed")
            self.swept.set()

    def stop(self) -> None:
        self._stop.set()
