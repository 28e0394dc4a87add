"""What one upload may cost: its parts, its files, its time, its disk, and how many run at once.

``UploadRequest`` (the app's request class) parses an upload's multipart body
as it arrives, and ``Uploads`` (``app.extensions["uploads"]``) bounds it:

- at most ``MAX_UPLOADS`` bodies are received at once (beyond: 503), and one
  starts only if the data folder's disk can take it and keep
  ``DISK_RESERVE_MB`` free (else 507); a disk that fills up while the body is
  written is a 507 too;
- the one file part is written straight to ``DATA_DIR/uploads/*.part`` (no
  copy through the system temp folder); a second file part is a 400, more
  than ``MAX_FORM_PARTS`` parts a 413;
- a body that makes no progress for ``UPLOAD_TIMEOUT_SECONDS`` is cut off: the
  ``BodyWatch`` shuts the read side of its socket, the blocked read returns at
  once, and the request ends with 408;
- a part file is deleted when its request ends unless a task took it, and
  every one of them at shutdown (``Uploads.close``).

The watch runs one thread while bodies are being received: with the engine's,
the only threads the server starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import resource
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from flask import Flask, Request, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler

from .exceptions import (
    AtCapacity,
    AudioServerError,
    BadRequest,
    InsufficientStorage,
    PayloadTooLarge,
    UploadTimeout,
)

logger = logging.getLogger(__name__)

UPLOADS = "uploads"  # the folder under DATA_DIR that holds the bodies being received
MAX_FORM_PARTS = 16  # the contract's form has six fields
READ_SIZE = 64 * 1024  # progress is counted per read: an upload must send this much per timeout
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
MB = 1024 * 1024


def disk_full(error: OSError) -> bool:
    """Tell whether an error means the disk (or the user's quota) is full."""
    return error.errno in DISK_FULL


def insufficient_storage(what: str) -> InsufficientStorage:
    return InsufficientStorage(
        f"The server's disk is full: there is no room for {what}. "
        "Try again later, or send a smaller file."
    )


def shutting_down() -> AtCapacity:
    return AtCapacity("The server is shutting down. Try again in a moment.", retry_after=10)


@contextlib.contextmanager
def disk_full_is_507(what: str) -> Iterator[None]:
    """Turn a full disk met in the block into a 507 answer."""
    try:
        yield
    except OSError as error:
        if not disk_full(error):
            raise
        raise insufficient_storage(what) from error


class WatchedBody:
    """One request body being received: when it last made progress, and why it was cut off."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.last_progress = time.monotonic()
        self.cut_off: str | None = None  # "timeout" or "shutdown"

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def cut(self, reason: str) -> None:
        """End the body now: reads waiting on the socket return as if the client had finished.

        Only the read side is shut: the answer (408, 503) still reaches the client.
        """
        self.cut_off = reason
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RD)


class BodyWatch:
    """Cuts off request bodies that make no progress for ``timeout`` seconds.

    A thread looks at the bodies being received a few times per timeout; it
    runs only while there are some.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._bodies: set[WatchedBody] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, connection: socket.socket) -> Iterator[WatchedBody]:
        """Watch a body while the block reads it."""
        body = WatchedBody(connection)
        with self._changed:
            self._bodies.add(body)
            if self._thread is None and self.timeout > 0:
                self._thread = threading.Thread(target=self._run, name="upload-watch", daemon=True)
                self._thread.start()
        try:
            yield body
        finally:
            with self._changed:
                self._bodies.discard(body)

    def cut_all(self, reason: str) -> None:
        with self._changed:
            for body in self._bodies:
                body.cut(reason)

    def _run(self) -> None:
        interval = min(1.0, max(0.05, self.timeout / 4))
        with self._changed:
            while self._bodies:
                self._changed.wait(interval)
                moment = time.monotonic()
                for body in self._bodies:
                    if body.cut_off is None and moment - body.last_progress > self.timeout:
                        body.cut("timeout")
            self._thread = None


class ProgressStream:
    """A request body stream that reports each read to its watch (reads of READ_SIZE at most).

    A read returns when READ_SIZE bytes have come (or the body's end): an upload
    is cut off when it sends less than that in a timeout. Smaller reads would
    cost a large upload more time in the parser (16 kB: +30 % for 150 MB).
    """

    def __init__(self, stream: IO[bytes], body: WatchedBody) -> None:
        self._stream = stream
        self._body = body

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(READ_SIZE if size < 0 else min(size, READ_SIZE))
        self._body.progressed()
        return data


class Uploads:
    """The bodies being received: their slots, their part files, their watch."""

    def __init__(
        self, folder: Path, *, max_uploads: int, timeout: float, reserve_bytes: int
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_uploads = max_uploads
        self.reserve_bytes = reserve_bytes
        self.watch = BodyWatch(timeout)
        self._receiving = 0
        self._parts: set[Path] = set()
        self._closed = False
        self._lock = threading.Lock()

    # -- slots --------------------------------------------------------------------

    def begin(self, content_length: int | None) -> None:
        """Take a slot for a body about to be received (AtCapacity; InsufficientStorage)."""
        self.check_room(content_length or 0, what="this upload")
        with self._lock:
            if self._closed:
                raise shutting_down()
            if self._receiving >= self.max_uploads:
                raise AtCapacity(
                    f"The server is receiving {self._receiving} uploads already, its limit. "
                    "Try again in a few seconds.",
                    retry_after=5,
                )
            self._receiving += 1

    def end(self) -> None:
        with self._lock:
            self._receiving -= 1

    def check_room(self, size: int, *, what: str) -> None:
        """Raise InsufficientStorage unless size bytes fit on the disk, the reserve left free."""
        free = shutil.disk_usage(self.folder).free
        if free - size < self.reserve_bytes:
            raise InsufficientStorage(
                f"The server's disk has no room for {what}: {free / MB:.0f} MB free, "
                f"{self.reserve_bytes / MB:.0f} MB of it kept in reserve. "
                "Try again later, or send a smaller file."
            )

    # -- part files ---------------------------------------------------------------

    def new_part(self) -> IO[bytes]:
        """Open a new part file for an uploaded file (AtCapacity once shutting down)."""
        with self._lock:
            if self._closed:
                raise shutting_down()
            part = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed by remove_part)
                "w+b", dir=self.folder, prefix="upload-", suffix=".part", delete=False
            )
            self._parts.add(Path(part.name))
        return part

    def remove_part(self, part: IO[bytes]) -> None:
        """Close a part file and delete it (a task that took it has moved it away)."""
        with contextlib.suppress(OSError):  # a full disk fails the last flush: deleted anyway
            part.close()
        path = Path(part.name)
        path.unlink(missing_ok=True)
        with self._lock:
            self._parts.discard(path)

    def close(self) -> None:
        """At shutdown: refuse new uploads, cut off those in progress, delete every part file."""
        with self._lock:
            self._closed = True
            parts, self._parts = self._parts, set()
        self.watch.cut_all("shutdown")
        for path in parts:
            path.unlink(missing_ok=True)
        if parts:
            logger.info("deleted %d unfinished uploads", len(parts))


def _connection(environ: dict[str, Any]) -> socket.socket | None:
    """The client's socket, where the server says (Werkzeug's and gunicorn's do)."""
    connection = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    return connection if isinstance(connection, socket.socket) else None


class UploadRequest(Request):
    """A request whose multipart body is parsed within the upload limits.

    Werkzeug would spool uploaded files to the system temp folder, and the
    server would then copy them; here the one file part is written once,
    under DATA_DIR/uploads, and moved into its task's folder.
    """

    max_form_parts = MAX_FORM_PARTS

    def _load_form_data(self) -> None:
        """Parse the body, watched; turn what cut it short into its answer (408, 413, 503, 507)."""
        if "form" in self.__dict__:
            return
        uploads: Uploads = current_app.extensions["uploads"]
        connection = _connection(self.environ)
        with contextlib.ExitStack() as stack:
            if connection is not None:
                self._watched = stack.enter_context(uploads.watch.watching(connection))
            try:
                super()._load_form_data()
            except AudioServerError:
                raise  # our own (a second file, shutting down), as it is
            except RequestEntityTooLarge:
                raise self._too_large() from None
            except Exception as error:
                answer = self._cut_off() or self._disk_full(error)
                if answer is None:
                    raise
                raise answer from error
            # A body cut off may also just end early (gunicorn's does), and parse as a short form.
            if cut_off := self._cut_off():
                raise cut_off

    def _get_stream_for_parsing(self) -> IO[bytes]:
        stream = super()._get_stream_for_parsing()
        body = getattr(self, "_watched", None)
        # Werkzeug's parser only reads the stream: a ProgressStream is all the IO it needs.
        return stream if body is None else cast(IO[bytes], ProgressStream(stream, body))

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        parts: list[IO[bytes]] = g.setdefault("upload_parts", [])
        if parts:
            raise BadRequest(
                "Send one file per upload, in the field 'file'; this form has more.",
                code="too_many_files",
            )
        parts.append(current_app.extensions["uploads"].new_part())
        return parts[-1]

    def _too_large(self) -> Exception:
        """Werkzeug's 413 for a body over the size limit, or ours for a form too large."""
        length, limit = self.content_length, self.max_content_length
        stream = self.__dict__.get("stream")  # absent when the Content-Length was over at once
        if limit is not None and (
            stream is None
            or (length is not None and length > limit)
            or (length is None and getattr(stream, "is_exhausted", False))  # chunked, read to limit
        ):
            return RequestEntityTooLarge()  # the body itself: answered as too_large
        return PayloadTooLarge(
            f"The form has more than {MAX_FORM_PARTS} parts, or a text field over "
            f"{(self.max_form_memory_size or 0) // 1000} kB. An upload is the field 'file' and "
            "at most the option fields pipeline, chunk_seconds, format, sid and stream_audio.",
            code="form_too_large",
        )

    def _cut_off(self) -> AudioServerError | None:
        """The answer for a body the watch cut off (None if it was not)."""
        body: WatchedBody | None = getattr(self, "_watched", None)
        if body is None or body.cut_off is None:
            return None
        if body.cut_off == "shutdown":
            return shutting_down()
        seconds = current_app.config["UPLOAD_TIMEOUT_SECONDS"]
        return UploadTimeout(
            f"The upload sent nothing for {seconds:g} s and was cut off. "
            "Check the connection and upload the file again."
        )

    @staticmethod
    def _disk_full(error: Exception) -> AudioServerError | None:
        if isinstance(error, OSError) and disk_full(error):
            return insufficient_storage("this upload")
        return None


def idle_timeout_handler(
    app: Flask, base: type[WSGIRequestHandler] = WSGIRequestHandler
) -> type[WSGIRequestHandler]:
    """Werkzeug's request handler (python app.py) with a timeout on every read of a connection.

    A connection that sends nothing for IDLE_TIMEOUT_SECONDS (no request, or a
    WebSocket without even the Socket.IO pings) is closed, and no longer holds
    its thread for ever. The upload watch cuts a stalled body first, with its
    408: the timeout is kept above UPLOAD_TIMEOUT_SECONDS.
    """
    seconds = max(app.config["IDLE_TIMEOUT_SECONDS"], app.config["UPLOAD_TIMEOUT_SECONDS"] + 2)

    class IdleTimeoutHandler(base):  # type: ignore[valid-type,misc]  # a base given at run time
        timeout = seconds

        def log_error(self, format: str, *args: Any) -> None:
            if format.startswith("Request timed out"):  # an idle connection, closed as meant
                logger.debug("closed a connection idle for %g s", seconds)
                return
            super().log_error(format, *args)

    return IdleTimeoutHandler


def raise_open_file_limit() -> None:
    """Raise the soft limit of open files to the hard one: each connection holds a descriptor.

    Many systems start processes at 1,024 (soft) while allowing far more (hard).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            logger.debug("open files limit raised from %d to %d", soft, hard)


def init_app(app: Flask) -> None:
    """Set up the upload limits of an app, and end each upload with its request."""
    app.extensions["uploads"] = Uploads(
        Path(app.config["DATA_DIR"]) / UPLOADS,
        max_uploads=app.config["MAX_UPLOADS"],
        timeout=app.config["UPLOAD_TIMEOUT_SECONDS"],
        reserve_bytes=int(app.config["DISK_RESERVE_MB"] * MB),
    )
    app.teardown_request(_end_upload)
    raise_open_file_limit()


def begin_upload() -> None:
    """Take a slot for the current request's upload (503 when full, 507 when the disk is)."""
    g.upload_connection = _connection(request.environ)
    uploads: Uploads = current_app.extensions["uploads"]
    uploads.begin(request.content_length)
    g.upload_slot = True


def _end_upload(error: BaseException | None = None) -> None:
    """Close every part file of the request and delete those no task took; free its slot.

    An upload answered before its body was read (503, 507, 413) does not keep its
    connection to send a body no one will read: its read side is shut, so the server
    closes it after the answer instead of draining the body first.
    """
    uploads: Uploads | None = current_app.extensions.get("uploads")
    if uploads is None:
        return
    for part in g.pop("upload_parts", []):
        uploads.remove_part(part)
    if g.pop("upload_slot", False):
        uploads.end()
    connection = g.pop("upload_connection", None)
    if connection is not None and "form" not in request.__dict__:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RD)
