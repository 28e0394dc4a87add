"""Where task state lives: the ``TaskStore`` seam and this process's implementation."""

from __future__ import annotations

import threading
from typing import Protocol

from .task import Task


class TaskStore(Protocol):
    """Every task the server knows (running, waiting, or finished and kept)."""

    def add(self, task: Task) -> None: ...
    def get(self, task_id: str) -> Task | None: ...
    def remove(self, task_id: str) -> None: ...
    def all(self) -> list[Task]: ...


class MemoryTaskStore:
    """The tasks of this process, in a dictionary (task.json in each folder outlives it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, Task] = {}

    def add(self, task: Task) -> None:
        with self._lock:
            self._tasks[task.id] = task

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def all(self) -> list[Task]:
        with self._lock:
            return list(self._tasks.values())
