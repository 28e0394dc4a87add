"""Socket.IO: the client events (subscribe, unsubscribe, stop) and the engine's broadcaster."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from engineio import packet as eio_packet
from flask import request
from flask_socketio import SocketIO
from socketio import packet as sio_packet

from .errors import AudioServerError, BadRequest
from .tasks import TaskEngine

logger = logging.getLogger(__name__)

NAMESPACE = "/"


class SocketBroadcaster:
    """Sends the engine's events through Socket.IO, each message's packets kept together.

    A binary event goes out as several Engine.IO packets (the JSON part, then
    each attachment). python-socketio queues them one by one, so two threads
    sending to the same client could interleave them and corrupt both. Every
    send, ours and the server's own (acks, connects), takes one lock.
    """

    def __init__(self, socketio: SocketIO) -> None:
        self._socketio = socketio
        self._server = socketio.server
        self._lock = threading.RLock()
        send_packet = self._server._send_packet

        def locked_send_packet(eio_sid: str, packet: Any) -> None:
            with self._lock:
                send_packet(eio_sid, packet)

        self._server._send_packet = locked_send_packet

    def emit(self, event: str, data: dict[str, Any], *, to: str) -> None:
        with self._lock:
            self._socketio.emit(event, data, to=to, namespace=NAMESPACE)

    def prepare(self, event: str, data: dict[str, Any]) -> list[eio_packet.Packet]:
        """Encode an event once, ahead of sending (JSON and binary attachments)."""
        encoded = self._server.packet_class(
            sio_packet.EVENT, namespace=NAMESPACE, data=[event, data]
        ).encode()
        pieces = encoded if isinstance(encoded, list) else [encoded]
        return [eio_packet.Packet(eio_packet.MESSAGE, piece) for piece in pieces]

    def send(
        self, prepared: list[eio_packet.Packet], *, to: str, max_backlog: int | None = None
    ) -> list[str]:
        """Queue a prepared event for a room or a client; it never waits.

        Clients that already have more than max_backlog packets waiting (they
        read slower than the task produces) are skipped and returned, so the
        caller can serve them at their own pace instead of buffering for them.
        """
        lagging = []
        with self._lock:
            for sid, eio_sid in self._server.manager.get_participants(NAMESPACE, to):
                if max_backlog is not None and (self._queued(eio_sid) or 0) > max_backlog:
                    lagging.append(sid)
                    continue
                for piece in prepared:
                    self._server.eio.send_packet(eio_sid, piece)
        return lagging

    def drain(self, *, timeout: float) -> None:
        """Wait until every client's queued packets are written (at most timeout seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sockets = list(self._server.eio.sockets.values())
            if all(socket.closed or socket.queue.empty() for socket in sockets):
                return
            time.sleep(0.01)  # the writer threads give no signal when their queues empty

    def backlog(self, sid: str) -> int | None:
        """Packets waiting to be written to a client; None if it is not connected."""
        eio_sid = self._server.manager.eio_sid_from_sid(sid, NAMESPACE)
        return None if eio_sid is None else self._queued(eio_sid)

    def _queued(self, eio_sid: str) -> int | None:
        # python-engineio keeps one unbounded queue per client; its length is the
        # only sign that a client reads slower than we write.
        socket = self._server.eio.sockets.get(eio_sid)
        return None if socket is None or socket.closed else socket.queue.qsize()

    def join(self, sid: str, room: str) -> None:
        self._server.enter_room(sid, room, namespace=NAMESPACE)

    def leave(self, sid: str, room: str) -> None:
        self._server.leave_room(sid, room, namespace=NAMESPACE)

    def is_connected(self, sid: str) -> bool:
        return isinstance(sid, str) and self._server.manager.is_connected(sid, NAMESPACE)

    def resolve(self, sid: str) -> str | None:
        """Return the session id of a connected client given its Socket.IO or Engine.IO id.

        Browsers send ``socket.id`` (the Socket.IO id); python-socketio's
        ``Client.sid`` is the Engine.IO id, so both are accepted.
        """
        if self.is_connected(sid):
            return sid
        namespace_sid = self._server.manager.sid_from_eio_sid(sid, NAMESPACE)
        return namespace_sid if namespace_sid and self.is_connected(namespace_sid) else None


def _task_id(data: Any) -> str:
    if not isinstance(data, dict):
        raise BadRequest(
            'The event data must be an object like {"task_id": "..."}.', code="bad_event"
        )
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise BadRequest(
            "task_id is missing or not a string.", code="invalid_parameter", parameter="task_id"
        )
    return task_id


def _from_index(data: dict[str, Any]) -> int:
    value = data.get("from_index", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(
            "from_index must be a whole number, 0 or more (the next chunk index you need).",
            code="invalid_parameter",
            parameter="from_index",
        )
    return value


def _error_ack(error: Exception) -> dict[str, Any]:
    """The socket twin of the HTTP error handlers: turn an exception into an error ack."""
    if isinstance(error, AudioServerError):
        return {"ok": False, **error.to_json()}
    logger.exception("unhandled error in a Socket.IO event from %s", request.sid)
    return {"ok": False, "error": "internal_error", "message": "The server failed; it is logged."}


def register_handlers(socketio: SocketIO, engine: TaskEngine) -> None:
    """Attach the client event handlers."""

    @socketio.on("connect")
    def connect(auth: Any = None) -> None:
        logger.info("client %s connected (%s)", request.sid, request.remote_addr)

    @socketio.on("disconnect")
    def disconnect(reason: Any = None) -> None:
        logger.info("client %s disconnected (%s)", request.sid, reason)

    @socketio.on("subscribe")
    def subscribe(data: Any = None) -> dict[str, Any]:
        task_id = _task_id(data)
        task = engine.subscribe(task_id, request.sid, from_index=_from_index(data))
        return {"ok": True, "task": engine.describe(task)}

    @socketio.on("unsubscribe")
    def unsubscribe(data: Any = None) -> dict[str, Any]:
        engine.unsubscribe(_task_id(data), request.sid)
        return {"ok": True}

    @socketio.on("stop")
    def stop(data: Any = None) -> dict[str, Any]:
        task = engine.stop(_task_id(data))
        return {
            "ok": True,
            "message": "Processing stopped",
            "task_id": task.id,
            "status": "stopped",
        }

    @socketio.on_error_default
    def on_error(error: Exception) -> dict[str, Any]:
        return _error_ack(error)
