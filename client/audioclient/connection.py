"""One Socket.IO connection for many tasks, that survives network drops.

python-socketio reconnects by itself (with growing delays); on every
reconnect this module subscribes each task again with ``from_index`` = the
next chunk that task needs, so a drop loses nothing and duplicates nothing.

Events of a task the client does not watch yet are kept until it does: with
``sid`` at upload the server may send the first chunks (or, for a short file,
everything) before the upload's answer has named the task.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import socketio

from . import InOrderClient
from .api import ClientError

TERMINAL_EVENTS = ("processing_complete", "processing_stopped", "processing_error")


class Subscriber(Protocol):
    """What the connection needs of a task's receiver (``Job``)."""

    task_id: str
    name: str

    @property
    def next_index(self) -> int: ...

    def on_chunk(self, chunk: dict[str, Any]) -> bool:
        """Take a chunk; return False if it is past the next index (a gap)."""

    def on_end(self, event: str, data: dict[str, Any]) -> None: ...

    def on_progress(self, progress: dict[str, Any]) -> None:
        """Take a processing_progress event (stage, chunks done in it, overall progress)."""

    def on_refused(self, ack: dict[str, Any]) -> None:
        """The server refused the subscription (the task is gone, say)."""


class Connection:
    """A Socket.IO connection to the server that resubscribes its tasks after a drop.

    Handlers run in the client's read loop (``InOrderClient``), one at a time
    and in arrival order; they only write and count, and never wait for the
    server (``subscribe`` is emitted with a callback, not called).
    """

    def __init__(
        self,
        url: str,
        *,
        on_notice: Callable[[str], None] = lambda text: None,
        reconnection_delay: float = 0.5,
        reconnection_delay_max: float = 4.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.client = InOrderClient(
            reconnection=True,
            reconnection_attempts=0,  # forever; each Job gives up on its own clock
            reconnection_delay=reconnection_delay,
            reconnection_delay_max=reconnection_delay_max,
            randomization_factor=0.2,
            # python-engineio would disconnect on Ctrl-C, before the client could send stop.
            handle_sigint=False,
        )
        self.drops = 0
        self._notice = on_notice
        self._lock = threading.Condition()
        self._sid: str | None = None
        self._disconnected_at: float | None = None
        self._closing = False
        # By task id; events are looked up by the task_id they name, None if they name none.
        self._subscribers: dict[str | None, Subscriber] = {}
        self._unclaimed: dict[str | None, list[tuple[str, dict[str, Any]]]] = {}
        self.client.on("connect", self._on_connect)
        self.client.on("disconnect", self._on_disconnect)
        self.client.on("audio_chunk", self._on_chunk)
        self.client.on("processing_progress", self._on_progress)
        for event in TERMINAL_EVENTS:
            self.client.on(event, functools.partial(self._on_end, event))

    # -- lifetime ------------------------------------------------------------------

    def open(self, *, timeout: float = 10.0) -> None:
        """Connect (over WebSocket); raise ClientError if the server cannot be reached."""
        try:
            self.client.connect(self.url, transports=["websocket"], wait_timeout=timeout)
        except socketio.exceptions.ConnectionError as error:
            raise ClientError(
                f"cannot open a Socket.IO connection to {self.url}: {error}"
            ) from error

    def close(self) -> None:
        """Disconnect, and stop reconnecting."""
        with self._lock:
            self._closing = True
        websocket = getattr(self.client.eio, "ws", None)
        if websocket is not None:
            # websocket-client waits 3 s for the server's close frame, which the
            # read loop has often consumed already.
            websocket.close = functools.partial(websocket.close, timeout=0.2)
        self.client.shutdown()

    def wait_connected(self, *, timeout: float) -> str:
        """Return the Socket.IO id, waiting for a reconnection if needed."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._sid is not None, timeout):
                raise ClientError(f"no Socket.IO connection to {self.url} for {timeout:.0f} s")
            assert self._sid is not None, "what wait_for waited for"
            return self._sid

    def seconds_disconnected(self) -> float:
        """How long the connection has been down (0 while it is up)."""
        with self._lock:
            if self._disconnected_at is None:
                return 0.0
            return time.monotonic() - self._disconnected_at

    # -- tasks ---------------------------------------------------------------------

    def watch(self, subscriber: Subscriber, *, subscribed_as: str | None) -> None:
        """Deliver a task's events to subscriber, from the first one this client got.

        subscribed_as is the ``sid`` sent with the upload: if the connection
        has changed since, the task is subscribed again on this one.
        """
        with self._lock:
            task_id = subscriber.task_id
            self._subscribers[task_id] = subscriber
            for event, data in self._unclaimed.pop(task_id, []):
                self._deliver(subscriber, event, data)
            if task_id in self._subscribers and self._sid not in (None, subscribed_as):
                self._subscribe(subscriber)

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._subscribers.pop(task_id, None)

    def stop(self, task_id: str, *, timeout: float = 5.0) -> dict[str, Any] | None:
        """Send ``stop``; return the ack, or None if the connection could not carry it."""
        try:
            ack: dict[str, Any] | None = self.client.call(
                "stop", {"task_id": task_id}, timeout=timeout
            )
            return ack
        except socketio.exceptions.SocketIOError:
            return None

    def _subscribe(self, subscriber: Subscriber) -> None:
        data = {"task_id": subscriber.task_id, "from_index": subscriber.next_index}
        # If the connection is down meanwhile, the next connect subscribes again.
        with contextlib.suppress(socketio.exceptions.SocketIOError):
            self.client.emit(
                "subscribe", data, callback=functools.partial(self._on_ack, subscriber)
            )

    # -- handlers (the read loop) --------------------------------------------------

    def _on_connect(self) -> None:
        with self._lock:
            self._sid = self.client.get_sid()
            self._disconnected_at = None
            self._lock.notify_all()
            if self.drops and not self._subscribers:
                self._notice("reconnected")
            for subscriber in self._subscribers.values():
                self._notice(
                    f"reconnected: resuming {subscriber.name} from chunk {subscriber.next_index}"
                )
                self._subscribe(subscriber)

    def _on_disconnect(self, *reason: Any) -> None:
        with self._lock:
            self._sid = None
            if self._closing:
                return
            self.drops += 1
            self._disconnected_at = time.monotonic()
        # python-engineio leaves a broken WebSocket's socket open (to be garbage
        # collected, with a ResourceWarning); close it before the next one opens.
        websocket = getattr(self.client.eio, "ws", None)
        if websocket is not None:
            websocket.shutdown()
        self._notice("connection to the server lost; reconnecting")

    def _on_ack(self, subscriber: Subscriber, ack: Any) -> None:
        if isinstance(ack, dict) and ack.get("ok"):
            return
        with self._lock:
            if self._subscribers.pop(subscriber.task_id, None) is None:
                return
        subscriber.on_refused(ack if isinstance(ack, dict) else {"message": repr(ack)})

    def _on_chunk(self, chunk: dict[str, Any]) -> None:
        self._dispatch("audio_chunk", chunk)

    def _on_end(self, event: str, data: dict[str, Any]) -> None:
        self._dispatch(event, data)

    def _on_progress(self, progress: dict[str, Any]) -> None:
        # Only the latest counts: one for a task not watched yet is not kept.
        with self._lock:
            subscriber = self._subscribers.get(progress.get("task_id"))
        if subscriber is not None:
            subscriber.on_progress(progress)

    def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            subscriber = self._subscribers.get(data.get("task_id"))
            if subscriber is None:
                self._unclaimed.setdefault(data.get("task_id"), []).append((event, data))
            else:
                self._deliver(subscriber, event, data)

    def _deliver(self, subscriber: Subscriber, event: str, data: dict[str, Any]) -> None:
        """Hand one event to its subscriber (with the lock held)."""
        if event == "audio_chunk":
            if not subscriber.on_chunk(data):
                self._subscribe(subscriber)  # a gap: ask again from the next index
            return
        self._subscribers.pop(subscriber.task_id, None)
        subscriber.on_end(event, data)
