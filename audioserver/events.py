"""Socket.IO: the client events (subscribe, unsubscribe, stop), the guard in front of them,
and the publisher that sends the engine's events to clients.

Clients send only small JSON events (the contract has no binary data from
clients). Everything else a client might send is refused before
python-socketio sees it (``ProtocolGuard``, ``GuardedWebSocket``): binary
attachments and messages over ``MAX_MESSAGE_BYTES`` close the connection at
once; other malformed packets are dropped, and close the connection at the
``PROTOCOL_ERRORS_BEFORE_CLOSE``-th. Each offending connection costs one
WARNING line (rate-limited), never a traceback.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from engineio import packet as eio_packet
from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
from flask import request
from flask_socketio import SocketIO
from simple_websocket import ConnectionClosed
from socketio import Server as SocketIOServer
from socketio import packet as sio_packet

from . import jsonio
from .errors import CLIENT_FAULTS
from .exceptions import AudioServerError, BadRequest
from .messages import ErrorAck, StopAck, SubscribeAck, UnsubscribeAck
from .tasks import TaskEngine

logger = logging.getLogger(__name__)

NAMESPACE = "/"
CLIENT_EVENTS = ("subscribe", "unsubscribe", "stop")
MAX_MESSAGE_BYTES = 64 * 1024  # the largest message a client may send (its events are < 1 KB)
PROTOCOL_ERRORS_BEFORE_CLOSE = 3  # malformed packets a connection may send; the 3rd closes it
MAX_PACKETS_PER_POST = 16  # Engine.IO packets in one long-polling POST (as python-engineio)


class Packet(sio_packet.Packet):  # type: ignore[misc]  # python-socketio has no type hints
    """Socket.IO packets whose JSON refuses NaN on the way out and cannot crash on the way in."""

    json = jsonio


def encode_event(event: str, data: Any) -> list[str | bytes]:
    """A Socket.IO event in the default namespace as its packets: the JSON text, then attachments.

    The same text and attachments as ``Packet(EVENT, data=[event, data]).encode()``,
    in one pass: python-socketio walks every value in Python to find the binary
    ones before it serialises (every number of a chunk's waveform and
    spectrum); here the JSON encoder's own walk (in C) hands each bytes value
    to ``default``, which numbers it and leaves the placeholder in its place.
    """
    attachments: list[bytes] = []

    def placeholder(value: Any) -> dict[str, Any]:
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        attachments.append(bytes(value) if isinstance(value, bytearray) else value)
        return {"_placeholder": True, "num": len(attachments) - 1}

    text = jsonio.dumps([event, data], separators=(",", ":"), default=placeholder)
    if not attachments:
        return [f"{sio_packet.EVENT}{text}"]
    return [f"{sio_packet.BINARY_EVENT}{len(attachments)}-{text}", *attachments]


class ProtocolError(Exception):
    """What a client sent is not a packet of this server's Socket.IO contract."""

    def __init__(self, reason: str, *, fatal: bool = False) -> None:
        super().__init__(reason)
        self.fatal = fatal  # close the connection at once


def _client(server: SocketIOServer, eio_sid: str) -> str:
    """How log lines name a client: its Socket.IO id (or Engine.IO id) and address."""
    sid = server.manager.sid_from_eio_sid(eio_sid, NAMESPACE) or eio_sid
    address = server.environ.get(eio_sid, {}).get("REMOTE_ADDR", "?")
    return f"client {sid} ({address})"


class ProtocolGuard:
    """Checks every Socket.IO packet a client sends, before python-socketio handles it.

    python-socketio would keep a binary event's attachments in memory until
    as many as the packet announces have come (``459999999-[...]`` never
    ends), and logs an ERROR with a traceback for each packet it cannot
    decode. Here a binary attachment closes the connection at once, and a
    malformed packet is dropped and counted; the connection is closed at the
    ``PROTOCOL_ERRORS_BEFORE_CLOSE``-th.
    """

    def __init__(self, server: SocketIOServer) -> None:
        self._server = server
        self._handle = server._handle_eio_message
        self._errors: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        server.eio.on("message", self.receive)  # in place of python-socketio's own handler

    def receive(self, eio_sid: str, data: str | bytes) -> None:
        """Engine.IO's message handler: check the packet, then let python-socketio handle it."""
        connection = self._server.eio.sockets.get(eio_sid)
        if connection is None or connection.closed:
            return  # what a connection closed for its faults still had in flight
        try:
            self._check(data)
            self._handle(eio_sid, data)
        except ProtocolError as error:
            self.refuse(eio_sid, str(error), fatal=error.fatal)
        except ValueError as error:  # python-socketio's word for a packet it does not expect
            self.refuse(eio_sid, f"an unexpected packet ({error})")

    def _check(self, data: str | bytes) -> None:
        if not isinstance(data, str):
            raise ProtocolError("a binary attachment (no event takes binary data)", fatal=True)
        try:
            packet = self._server.packet_class(encoded_packet=data)
        except ValueError as error:
            raise ProtocolError(f"a packet that is not Socket.IO ({error})") from None
        if packet.attachment_count or packet.packet_type in (
            sio_packet.BINARY_EVENT,
            sio_packet.BINARY_ACK,
        ):
            raise ProtocolError("a binary event (no event takes binary data)", fatal=True)
        if packet.packet_type == sio_packet.EVENT:
            name = packet.data[0] if isinstance(packet.data, list) and packet.data else None
            if not isinstance(name, str):
                raise ProtocolError("an event without a name")
            if name in self._server.reserved_events:
                raise ProtocolError(f"an event named {name!r}, which only the server raises")
        elif packet.packet_type not in (sio_packet.CONNECT, sio_packet.DISCONNECT):
            raise ProtocolError(f"a packet of type {packet.packet_type}, which clients do not send")

    def refuse(self, eio_sid: str, reason: str, *, fatal: bool = False) -> None:
        """Count a protocol error of a connection: one log line, and close it when it is time."""
        connection = self._server.eio.sockets.get(eio_sid)
        with self._lock:
            count = self._errors.get(connection, 0) + 1 if connection is not None else 1
            if connection is not None:
                self._errors[connection] = count
        close = fatal or count >= PROTOCOL_ERRORS_BEFORE_CLOSE
        if count == 1:
            consequence = (
                "closing the connection"
                if close
                else f"dropped (the connection is closed at {PROTOCOL_ERRORS_BEFORE_CLOSE} errors)"
            )
            CLIENT_FAULTS.warning(
                logger, "%s sent %.160s: %s", _client(self._server, eio_sid), reason, consequence
            )
        if close and connection is not None:
            # Without waiting: a client that does not read must not hold this thread.
            connection.close(wait=False, reason=self._server.eio.reason.SERVER_DISCONNECT)


# Engine.IO packets a client sends over long-polling: close, pong, message.
_POLLING_PACKET_TYPES = frozenset("134")


def _polling_refusal(environ: dict[str, Any], max_bytes: int) -> str | None:
    """Why a long-polling POST is not one a Socket.IO client sends; None if it is.

    python-engineio logs an ERROR with a traceback for a body it cannot
    decode, and for a packet type it does not expect it closes the connection
    waiting for a poll that may never come (holding the request's thread).
    The body is read here, checked, and put back for Engine.IO.
    """
    length = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit():
        return "a long-polling POST without a Content-Length"
    if int(length) > max_bytes:
        return f"a long-polling POST over {max_bytes} bytes"
    body = environ["wsgi.input"].read(int(length))
    environ["wsgi.input"] = io.BytesIO(body)
    try:
        packets = body.decode().split("\x1e")
    except UnicodeDecodeError:
        return "a long-polling POST that is not UTF-8"
    if len(packets) > MAX_PACKETS_PER_POST:
        return f"more than {MAX_PACKETS_PER_POST} packets in one long-polling POST"
    for packet in packets:
        if packet[:1] not in _POLLING_PACKET_TYPES:
            return f"a long-polling packet of type {packet[:1]!r}, which clients do not send"
    return None


class GuardedWebSocket(SimpleWebSocketWSGI):  # type: ignore[misc]  # engineio: no type hints
    """Engine.IO's WebSocket (simple-websocket), with a size limit and no tolerance for garbage.

    simple-websocket would assemble a message of any size before Engine.IO
    checks it; here it stops at ``max_http_buffer_size`` (and closes with
    1009). A frame that is not a text Engine.IO packet (binary data, empty,
    or text that does not start with a packet type) would escape Engine.IO's
    reader as an exception, with a traceback in the log. Either closes the
    connection, through the guard (one log line).
    """

    POLL_SECONDS = 1.0

    def __init__(self, handler: Any, server: Any, *, guard: ProtocolGuard, **kwargs: Any) -> None:
        super().__init__(handler, server, max_message_size=server.max_http_buffer_size, **kwargs)
        self.guard = guard
        # The handler Engine.IO gives is its Socket's bound method; the Socket's id names a client.
        self.eio_sid = getattr(getattr(handler, "__self__", None), "sid", None)

    def wait(self) -> str | bytes | None:
        data = self._receive()
        if data is None:
            if self.ws.max_message_size and self.ws.incoming_message_len > self.ws.max_message_size:
                self._refuse(f"a message over {self.ws.max_message_size} bytes")
            return None
        if isinstance(data, bytes):
            self._refuse("binary data (no event takes binary data)")
            return None
        if not data[:1].isdigit():
            self._refuse("a WebSocket message that is not an Engine.IO packet")
            return None
        return data

    def _receive(self) -> str | bytes | None:
        """The next message; None once the WebSocket is closed."""
        while True:
            try:
                data: str | bytes | None = self.ws.receive(timeout=self.POLL_SECONDS)
            except ConnectionClosed:
                return None
            # simple-websocket may close (a message too large) without waking a waiting
            # receive(): hence a timeout, and a look at the connection after it.
            if data is not None or not self.ws.connected:
                return data

    def _refuse(self, reason: str) -> None:
        # Closing the Engine.IO socket ends its writer, which closes this WebSocket; the None
        # that wait() returns ends the reader.
        self.guard.refuse(self.eio_sid or "?", reason, fatal=True)


def guard_protocol(socketio: SocketIO) -> ProtocolGuard:
    """Put the guards in front of python-socketio and python-engineio (see the module docstring)."""
    server = socketio.server  # type: ignore[attr-defined]  # left out of Flask-SocketIO's stubs
    server.eio.max_http_buffer_size = MAX_MESSAGE_BYTES
    guard = ProtocolGuard(server)
    # python-engineio has no option for the WebSocket class: its async driver table is
    # copied for this server only (the module's table is shared by every server).
    websocket = functools.partial(GuardedWebSocket, guard=guard)
    server.eio._async = {**server.eio._async, "websocket": websocket}
    handle_request: Callable[[dict[str, Any], Any], list[bytes]] = server.eio.handle_request

    def checked_request(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        eio_sid = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("sid", [""])[0]
        connection = server.eio.sockets.get(eio_sid)
        if environ["REQUEST_METHOD"] != "POST" or connection is None:
            return handle_request(environ, start_response)
        reason: str | None
        if connection.closed:  # python-engineio would fail with a KeyError (and a traceback)
            reason = "a long-polling POST to a closed connection"
        else:
            reason = _polling_refusal(environ, MAX_MESSAGE_BYTES)
            if reason is None:
                return handle_request(environ, start_response)
            guard.refuse(eio_sid, reason, fatal=True)
        body = jsonio.dumps({"error": "bad_packet", "message": f"The server got {reason}."})
        start_response("400 BAD REQUEST", [("Content-Type", "application/json")])
        return [body.encode()]

    server.eio.handle_request = checked_request
    return guard


class SocketPublisher:
    """Sends the engine's events to clients through Socket.IO, each message's packets together.

    A binary event goes out as several Engine.IO packets (the JSON part, then
    each attachment). python-socketio queues them one by one, so two threads
    sending to the same client could interleave them and corrupt both. Every
    send, ours and the server's own (acks, connects), takes one lock.
    """

    def __init__(self, socketio: SocketIO) -> None:
        self._server = socketio.server  # type: ignore[attr-defined]  # as in guard_protocol
        self._lock = threading.RLock()
        send_packet = self._server._send_packet

        def locked_send_packet(eio_sid: str, packet: Any) -> None:
            with self._lock:
                send_packet(eio_sid, packet)

        self._server._send_packet = locked_send_packet

    def encode(self, event: str, data: Mapping[str, Any]) -> list[eio_packet.Packet]:
        """Encode an event once, for any number of clients (JSON and binary attachments)."""
        return [eio_packet.Packet(eio_packet.MESSAGE, piece) for piece in encode_event(event, data)]

    def send(self, sid: str, packet: list[eio_packet.Packet]) -> None:
        """Queue an encoded event for a client; it never waits (nothing if it is gone)."""
        eio_sid = self._server.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None:
            return
        with self._lock:
            for piece in packet:
                self._server.eio.send_packet(eio_sid, piece)

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
        if not self.is_connected(sid):
            return None
        eio_sid = self._server.manager.eio_sid_from_sid(sid, NAMESPACE)
        # python-engineio keeps one unbounded queue per client; its length is the
        # only sign that a client reads slower than we write.
        socket = self._server.eio.sockets.get(eio_sid)
        return None if socket is None or socket.closed else socket.queue.qsize()

    def is_connected(self, sid: str) -> bool:
        connected: bool = isinstance(sid, str) and self._server.manager.is_connected(sid, NAMESPACE)
        return connected

    def resolve(self, sid: str) -> str | None:
        """Return the session id of a connected client given its Socket.IO or Engine.IO id.

        Browsers send ``socket.id`` (the Socket.IO id); python-socketio's
        ``Client.sid`` is the Engine.IO id, so both are accepted.
        """
        if self.is_connected(sid):
            return sid
        namespace_sid = self._server.manager.sid_from_eio_sid(sid, NAMESPACE)
        return namespace_sid if namespace_sid and self.is_connected(namespace_sid) else None


def _payload(args: tuple[Any, ...]) -> Any:
    """The one argument of a client event (None if there is none)."""
    if len(args) > 1:
        raise BadRequest(
            f'The event takes one argument, an object like {{"task_id": "..."}}; got {len(args)}.',
            code="bad_event",
        )
    return args[0] if args else None


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


def _request_sid() -> str:
    """The Socket.IO id of the client whose event is being handled."""
    sid: str = request.sid  # type: ignore[attr-defined]  # Flask-SocketIO sets it on Flask's request
    return sid


def _error_ack(error: BaseException) -> ErrorAck:
    """The socket twin of the HTTP error handlers: turn an exception into an error ack."""
    if isinstance(error, AudioServerError):
        return {"ok": False, **error.to_json()}
    logger.exception("unhandled error in a Socket.IO event from %s", _request_sid())
    return {"ok": False, "error": "internal_error", "message": "The server failed; it is logged."}


def register_handlers(socketio: SocketIO, engine: TaskEngine) -> None:
    """Attach the client event handlers, behind the protocol guard."""
    guard_protocol(socketio)

    @socketio.on("connect")
    def connect(auth: Any = None) -> None:
        logger.info("client %s connected (%s)", _request_sid(), request.remote_addr)

    @socketio.on("disconnect")
    def disconnect(reason: Any = None) -> None:
        logger.info("client %s disconnected (%s)", _request_sid(), reason)
        engine.disconnected(_request_sid())

    @socketio.on("subscribe")
    def subscribe(*args: Any) -> SubscribeAck:
        data = _payload(args)
        task_id = _task_id(data)
        task = engine.subscribe(task_id, _request_sid(), from_index=_from_index(data))
        return {"ok": True, "task": engine.describe(task)}

    @socketio.on("unsubscribe")
    def unsubscribe(*args: Any) -> UnsubscribeAck:
        engine.unsubscribe(_task_id(_payload(args)), _request_sid())
        return {"ok": True}

    @socketio.on("stop")
    def stop(*args: Any) -> StopAck:
        task = engine.stop(_task_id(_payload(args)))
        return {
            "ok": True,
            "message": "Processing stopped",
            "task_id": task.id,
            "status": "stopped",
        }

    @socketio.on("*")
    def unknown_event(event: str, *args: Any) -> ErrorAck:
        """Any other event: an error ack (sent if the client asked for one)."""
        raise BadRequest(
            f"There is no event {event[:64]!r}. Client events: {', '.join(CLIENT_EVENTS)}.",
            code="unknown_event",
        )

    @socketio.on_error_default
    def on_error(error: BaseException) -> ErrorAck:
        return _error_ack(error)
