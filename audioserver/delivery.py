"""Delivery: each subscriber reads its task's chunk log from its own cursor.

A subscriber is (client, task, cursor). Its thread sends what the log holds
from the cursor on, waits on the log once it has caught up, pauses while the
client's transport backlog is full (a slow client is served at its own
pace, and nothing waits in memory for it), and ends with the terminal
event. ``subscribe`` with ``from_index`` creates the cursor, or moves it.
Live and replay are the same loop: there is no hand-over between the two,
so nothing can fall between them, and no chunk is sent twice.

Each chunk is encoded once however many cursors send it (a small per-task
cache); ``processing_progress`` goes to the cursors that have caught up.

``Publisher`` is the seam to the clients' transport: how one packet reaches
one client. ``SocketPublisher`` (events.py) is Socket.IO's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .chunklog import LogClosed
from .messages import AudioChunkEvent, ProcessingProgressEvent
from .task import Task

logger = logging.getLogger("audioserver.delivery")

WAKE_SECONDS = 1.0  # a waiting cursor looks at its client at least this often
PACKET_CACHE_BYTES = 4 * 1024 * 1024  # encoded chunks kept per task for cursors that follow
PACKET_OVERHEAD_BYTES = 4096  # a chunk's analysis, JSON-encoded, about
BACKLOG_POLL_SECONDS = 0.02  # python-engineio has no "queue drained" signal to wait on


class Publisher(Protocol):
    """How one packet reaches one client (Socket.IO, or a recorder in tests)."""

    def encode(self, event: str, data: Mapping[str, Any]) -> Any:
        """Encode an event once, for sending to any number of clients."""
        ...

    def send(self, sid: str, packet: Any) -> None:
        """Queue an encoded event for a client; never waits for the client."""
        ...

    def backlog(self, sid: str) -> int | None:
        """Packets waiting to be written to a client; None once it is gone."""
        ...

    def resolve(self, sid: str) -> str | None:
        """The id of a connected client given an id it goes by; None if not connected."""
        ...


class NullPublisher:
    """A publisher with no clients."""

    def encode(self, event: str, data: Mapping[str, Any]) -> Any:
        return None

    def send(self, sid: str, packet: Any) -> None:
        pass

    def backlog(self, sid: str) -> int | None:
        return None

    def resolve(self, sid: str) -> str | None:
        return None


def chunk_payload(task: Task, meta: dict[str, Any], pcm: bytes) -> AudioChunkEvent:
    """The audio_chunk event's data for a chunk (chunks_total: the best estimate now)."""
    payload: AudioChunkEvent = {
        "task_id": meta["task_id"],
        "index": meta["index"],
        "chunks_total": task.chunks_total,
        "start": meta["start"],
        "duration": meta["duration"],
        "sample_rate": meta["sample_rate"],
        "channels": meta["channels"],
        "peak_db": meta["peak_db"],
        "rms_db": meta["rms_db"],
        "waveform": meta["waveform"],
        "spectrum": meta["spectrum"],
        "encoding": meta["encoding"],
        "processing_ms": meta["processing_ms"],
        "worker": meta["worker"],
    }
    if task.options.stream_audio:
        payload["audio"] = pcm
    return payload


@dataclass(eq=False)
class Cursor:
    """One client's place in one task's log."""

    sid: str
    position: int
    moves: int = 0  # bumped when subscribe moves the cursor (a send in flight is dropped)
    cancelled: bool = False
    finished: bool = False  # the terminal event was sent
    progress_seen: int = 0  # the number of the last processing_progress it was sent


@dataclass(eq=False)
class Cached:
    """An encoded chunk, and how many cursors will still send it."""

    packet: Any
    readers: int
    size: int


@dataclass(eq=False)
class Progress:
    """A processing_progress event, and where it stands among the chunks."""

    number: int  # counts the task's progress events here, from 1
    position: int  # the chunks emitted before it: it goes between chunk position-1 and position
    data: ProcessingProgressEvent
    packet: Any = None  # encoded on first send


@dataclass(eq=False)
class Feed:
    """A task's cursors and its recently encoded chunks."""

    task: Task
    lock: threading.Lock = field(default_factory=threading.Lock)
    encoding: threading.Lock = field(default_factory=threading.Lock)
    cursors: dict[str, Cursor] = field(default_factory=dict)
    packets: dict[int, Cached] = field(default_factory=dict)
    cached_bytes: int = 0
    terminal: Any = None
    progress_sent: int = 0  # processing_progress events so far (numbers them)
    stage_ends: list[Progress] = field(default_factory=list)  # one per stage that has ended


class Delivery:
    """Every subscriber of every task, each served by a thread from its own cursor."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        client_backlog: int,
        start: Callable[[str, Callable[[], None]], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self.client_backlog = client_backlog
        self._start = start or _thread
        self._lock = threading.Lock()
        self._feeds: dict[str, Feed] = {}  # the tasks with cursors: a feed goes with its last
        self.on_idle: Callable[[Task], None] = lambda task: None  # a task's last cursor ended

    def subscribe(self, task: Task, sid: str, *, from_index: int = 0) -> None:
        """Send a client every chunk from from_index on, then the rest as it comes, then the end."""
        with self._lock:  # the cursor joins the feed before an idle feed can be let go
            feed = self._feeds.get(task.id)
            if feed is None:
                feed = self._feeds[task.id] = Feed(task)
            with feed.lock:
                cursor = feed.cursors.get(sid)
                if cursor is not None and not cursor.cancelled and not cursor.finished:
                    cursor.position = from_index
                    cursor.moves += 1
                    moved = True
                else:
                    cursor = feed.cursors[sid] = Cursor(sid, from_index)
                    moved = False
        if moved:
            task.chunk_log.wake()
        else:
            self._start(f"deliver-{task.id[:8]}", lambda: self._serve(feed, cursor))

    def unsubscribe(self, task: Task, sid: str) -> None:
        """Send a client nothing more of a task."""
        with self._lock:
            feed = self._feeds.get(task.id)
        if feed is None:
            return
        with feed.lock:
            cursor = feed.cursors.pop(sid, None)
            if cursor is not None:
                cursor.cancelled = True
        task.chunk_log.wake()

    def drop_client(self, sid: str) -> None:
        """A client went away: end its cursors."""
        with self._lock:
            feeds = list(self._feeds.values())
        for feed in feeds:
            with feed.lock:
                cursor = feed.cursors.pop(sid, None)
                if cursor is None:
                    continue
                cursor.cancelled = True
            feed.task.chunk_log.wake()

    def forget(self, task: Task) -> None:
        """A task was deleted: its cursors end (its log is closed)."""
        with self._lock:
            feed = self._feeds.pop(task.id, None)
        if feed is not None:
            with feed.lock:
                for cursor in feed.cursors.values():
                    cursor.cancelled = True
                feed.cursors.clear()
                feed.packets.clear()

    def subscribers(self, task: Task) -> int:
        """How many cursors read a task here."""
        return self.serving(task.id)

    def serving(self, task_id: str) -> int:
        """How many cursors read a task here (by its id)."""
        with self._lock:
            feed = self._feeds.get(task_id)
            if feed is None:
                return 0
            with feed.lock:
                return len(feed.cursors)

    def progress(
        self, task: Task, data: ProcessingProgressEvent, *, stage_end: bool = False
    ) -> None:
        """Send processing_progress to the subscribers that have every chunk before it.

        Like a chunk, a throttled one is never queued for a client that is not
        reading: a client behind the log, or with a full backlog, skips it. A
        stage's end is kept for the cursors behind: each sends it when it gets
        to its place among the chunks (before the next chunk, or the end), so
        every subscriber has every stage's end, in order.
        """
        with self._lock:
            feed = self._feeds.get(task.id)
        if feed is None:
            return
        with feed.lock:
            feed.progress_sent += 1
            event = Progress(feed.progress_sent, data["chunks_emitted"], data)
            if stage_end:
                feed.stage_ends.append(event)
            for cursor in feed.cursors.values():
                if cursor.cancelled or cursor.finished or cursor.position != event.position:
                    continue
                backlog = self.publisher.backlog(cursor.sid)
                if backlog is not None and backlog > self.client_backlog:
                    continue
                self._stage_ends_due(feed, cursor)  # this one among them, if it is one
                if not stage_end:
                    self._send_progress(cursor, event)

    def _send_progress(self, cursor: Cursor, progress: Progress) -> None:
        """Send a progress event to a cursor (called with its feed's lock held)."""
        if progress.packet is None:
            progress.packet = self.publisher.encode("processing_progress", progress.data)
        self.publisher.send(cursor.sid, progress.packet)
        cursor.progress_seen = progress.number

    def _stage_ends_due(self, feed: Feed, cursor: Cursor) -> None:
        """Send the stage ends that belong where a cursor is and it has not had yet."""
        for progress in feed.stage_ends:
            if progress.number > cursor.progress_seen and progress.position == cursor.position:
                self._send_progress(cursor, progress)

    def ended(self, task: Task) -> None:
        """The task's log has just ended: send the terminal event to every caught-up cursor.

        Sent here, in the thread that ended the task (a stop's, say), so a
        client that has every chunk has the end before that thread goes on; a
        cursor still behind sends it itself after its last chunk.
        """
        with self._lock:
            feed = self._feeds.get(task.id)
        terminal = task.chunk_log.terminal
        if feed is None or terminal is None:
            return
        length = len(task.chunk_log)
        with feed.lock:
            for cursor in list(feed.cursors.values()):
                if cursor.cancelled or cursor.finished or cursor.position != length:
                    continue
                self._send_terminal(feed, cursor, terminal)
        task.chunk_log.wake()

    def _send_terminal(self, feed: Feed, cursor: Cursor, terminal: tuple[str, Any]) -> None:
        """Send the end to a cursor and retire it (called with feed.lock held)."""
        self._stage_ends_due(feed, cursor)
        if feed.terminal is None:
            feed.terminal = self.publisher.encode(*terminal)
        self.publisher.send(cursor.sid, feed.terminal)
        cursor.finished = True
        if feed.cursors.get(cursor.sid) is cursor:
            del feed.cursors[cursor.sid]

    # -- one cursor's thread ------------------------------------------------------------

    def _serve(self, feed: Feed, cursor: Cursor) -> None:
        try:
            self._follow(feed, cursor)
        except LogClosed:
            pass  # the task was deleted while the cursor read it
        except Exception:  # a bug: this client's stream ends, the others go on
            logger.exception("delivery of task %s to client %s failed", feed.task.id, cursor.sid)
        finally:
            with feed.lock:
                if feed.cursors.get(cursor.sid) is cursor and not cursor.finished:
                    del feed.cursors[cursor.sid]
                cursor.cancelled = True
                idle = not feed.cursors
            if idle:
                with feed.encoding:  # no cursor left to read what is cached
                    feed.packets.clear()
                    feed.cached_bytes = 0
                self._let_go(feed)

    def _let_go(self, feed: Feed) -> None:
        """Forget a feed whose last cursor has ended (a new subscriber starts a new one)."""
        with self._lock, feed.lock:
            if feed.cursors or self._feeds.get(feed.task.id) is not feed:
                return  # a subscriber came meanwhile, or the task was forgotten
            del self._feeds[feed.task.id]
        self.on_idle(feed.task)

    def _follow(self, feed: Feed, cursor: Cursor) -> None:
        log = feed.task.chunk_log
        while True:
            with feed.lock:
                if cursor.cancelled or cursor.finished:
                    return
                position, moves = cursor.position, cursor.moves
            if position < len(log):
                if not self._writable(cursor):
                    return
                packet = self._chunk_packet(feed, position)
                with feed.lock:
                    if cursor.cancelled or cursor.finished:
                        return
                    if cursor.moves == moves:
                        self._stage_ends_due(feed, cursor)
                        self.publisher.send(cursor.sid, packet)
                        cursor.position = position + 1
                continue
            terminal = log.terminal
            if terminal is not None:
                with feed.lock:
                    if cursor.finished or cursor.cancelled:
                        return
                    if cursor.moves != moves:
                        continue
                    self._send_terminal(feed, cursor, terminal)
                return
            if log.closed:
                return
            if not log.wait(position, timeout=WAKE_SECONDS) and (
                self.publisher.backlog(cursor.sid) is None
            ):
                return  # the client went away while the task had nothing new

    def _chunk_packet(self, feed: Feed, index: int) -> Any:
        """Chunk index, encoded once for every cursor that sends it.

        A packet is kept for the cursors that were at or behind it when it was
        encoded (they send it next), and dropped when the last of them has.
        At most PACKET_CACHE_BYTES per task: past that the oldest go first, so
        a client far behind (or paused) encodes its own and the live ones share.
        """
        with feed.encoding:
            cached = feed.packets.get(index)
            if cached is not None:
                cached.readers -= 1
                if cached.readers <= 0:
                    del feed.packets[index]
                    feed.cached_bytes -= cached.size
                return cached.packet
            meta, pcm = feed.task.chunk_log.read(index)
            packet = self.publisher.encode("audio_chunk", chunk_payload(feed.task, meta, pcm))
            with feed.lock:
                positions = [
                    cursor.position
                    for cursor in feed.cursors.values()
                    if not (cursor.cancelled or cursor.finished)
                ]
            readers = sum(1 for position in positions if position <= index) - 1  # not this one
            if readers > 0:
                oldest = min(positions)
                size = len(pcm) + PACKET_OVERHEAD_BYTES
                for key in sorted(feed.packets):  # drop what no cursor reads, then the oldest
                    if key >= oldest and feed.cached_bytes + size <= PACKET_CACHE_BYTES:
                        break
                    feed.cached_bytes -= feed.packets.pop(key).size
                if feed.cached_bytes + size <= PACKET_CACHE_BYTES:
                    feed.packets[index] = Cached(packet, readers, size)
                    feed.cached_bytes += size
            return packet

    def _writable(self, cursor: Cursor) -> bool:
        """Wait until a client has room for more (False if it went away or was unsubscribed)."""
        backlog = self.publisher.backlog(cursor.sid)
        if backlog is None:
            return False
        if backlog <= self.client_backlog:
            return True
        logger.info("client %s reads slowly; serving it at its pace", cursor.sid)
        while not cursor.cancelled:
            backlog = self.publisher.backlog(cursor.sid)
            if backlog is None:
                return False
            if backlog <= self.client_backlog // 2:
                return True
            time.sleep(BACKLOG_POLL_SECONDS)
        return False


def _thread(name: str, target: Callable[[], None]) -> None:
    threading.Thread(target=target, name=name, daemon=True).start()
