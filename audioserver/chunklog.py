"""A task's chunk log: the chunks it has emitted, in order, then its terminal event.

The log is the stream. Its one writer (the task's ``TaskRun``) appends each
processed chunk in index order and ends the log with the task's terminal
event; every reader (a subscriber's cursor, the waveform, a restart) reads
it from an index on, and waits on it for the next entry. Live delivery and
replay are therefore the same thing: a cursor that has caught up simply
waits.

``ChunkLog`` is the seam: where chunks live and how a waiting cursor is
woken. ``FileChunkLog`` keeps them in the task's folder (``ChunkStore``:
result.wav and chunks.jsonl, as before) and wakes cursors with a condition
variable, keeping the last few chunks in memory so that cursors that follow
the stream live do not read them back from disk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Protocol

from .storage import ChunkStore

TAIL_CHUNKS = 4  # chunks kept in memory for live cursors (older ones are read from disk)


class LogClosed(Exception):
    """The log was closed (its task deleted): there is nothing more to read."""


class ChunkLog(Protocol):
    """A task's emitted chunks and its terminal event; one writer, any number of readers."""

    def __len__(self) -> int: ...

    @property
    def terminal(self) -> tuple[str, dict[str, Any]] | None: ...

    @property
    def closed(self) -> bool: ...

    def append(self, meta: dict[str, Any], pcm: bytes) -> int: ...

    def end(self, event: str, data: dict[str, Any]) -> None: ...

    def read(self, index: int) -> tuple[dict[str, Any], bytes]: ...

    def read_meta(self, index: int) -> dict[str, Any]: ...

    def wait(self, index: int, *, timeout: float) -> bool: ...

    def wake(self) -> None: ...

    def finalize(self) -> None: ...

    def close(self) -> None: ...


class WaitableLog:
    """What every chunk log shares: its end, its closing, and the readers waiting on it."""

    def __init__(self) -> None:
        self._terminal: tuple[str, dict[str, Any]] | None = None
        self._closed = False
        self._changed = threading.Condition()

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def terminal(self) -> tuple[str, dict[str, Any]] | None:
        return self._terminal

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, index: int, *, timeout: float) -> bool:
        """Wait until entry index exists (a chunk, or the end); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._holds(index), timeout)

    def _holds(self, index: int) -> bool:
        return len(self) > index or self._terminal is not None or self._closed

    def wake(self) -> None:
        """Wake every waiting reader (one of them has something else to do)."""
        with self._changed:
            self._changed.notify_all()


class FileChunkLog(WaitableLog):
    """A chunk log on disk (the task's ``ChunkStore``), woken by a condition variable."""

    def __init__(
        self, store: ChunkStore, *, terminal: tuple[str, dict[str, Any]] | None = None
    ) -> None:
        super().__init__()
        self.store = store
        self._terminal = terminal
        self._length = len(store)
        self._tail: OrderedDict[int, tuple[dict[str, Any], bytes]] = OrderedDict()

    def __len__(self) -> int:
        return self._length

    def append(self, meta: dict[str, Any], pcm: bytes) -> int:
        """Write the next chunk and wake its readers; return its index."""
        with self._changed:
            if self._terminal is not None or self._closed:
                raise LogClosed("the log has ended")
            self.store.append(meta, pcm)
            index = self._length
            self._tail[index] = (meta, pcm)
            if len(self._tail) > TAIL_CHUNKS:
                self._tail.popitem(last=False)
            self._length = index + 1
            self._changed.notify_all()
            return index

    def end(self, event: str, data: dict[str, Any]) -> None:
        """Write the terminal event: nothing comes after it (the readers go to disk now)."""
        with self._changed:
            self._terminal = (event, data)
            self._tail.clear()  # a finished task may be kept for a day: it holds no audio
            self._changed.notify_all()

    def read(self, index: int) -> tuple[dict[str, Any], bytes]:
        """Return chunk index's analysis and PCM (raise LogClosed once the log is closed)."""
        with self._changed:
            if self._closed:
                raise LogClosed("the log was closed")
            if not 0 <= index < self._length:
                raise IndexError(index)
            cached = self._tail.get(index)
            if cached is not None:
                return cached
            return self.store.read(index)

    def read_meta(self, index: int) -> dict[str, Any]:
        with self._changed:
            if self._closed:
                raise LogClosed("the log was closed")
            cached = self._tail.get(index)
            return cached[0] if cached is not None else self.store.read_meta(index)

    def wait(self, index: int, *, timeout: float) -> bool:
        """Wait until entry index exists (a chunk, or the end); False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._length > index or self._terminal is not None or self._closed,
                timeout,
            )

    def wake(self) -> None:
        """Wake every waiting reader (one of them has something else to do)."""
        with self._changed:
            self._changed.notify_all()

    def finalize(self) -> None:
        with self._changed:
            if not self._closed:
                self.store.finalize()

    def close(self) -> None:
        """Close the files; readers get LogClosed from now on."""
        with self._changed:
            if not self._closed:
                self._closed = True
                self._tail.clear()
                self.store.close()
            self._changed.notify_all()
