"""The server's exceptions, and the one place that turns them into JSON answers.

Every error a client can cause is an ``AudioServerError``; its subclasses
carry the HTTP status and a short machine-readable code::

    AudioServerError              .status, .code, .message, .extra
    ├── BadRequest                400  (missing_file, empty_filename, bad_json, bad_host, ...)
    │   └── ParameterError        400  invalid_parameter / invalid_pipeline
    ├── TaskNotFound              404  task_not_found
    ├── UploadTimeout             408  upload_timeout
    ├── TaskConflict              409  task_finished / task_not_ready / task_failed
    ├── PayloadTooLarge           413  too_large
    ├── UnsupportedMedia          415  not_audio
    │   └── DecodeError                (ffmpeg could not decode the upload)
    ├── AtCapacity                503  at_capacity (+ .retry_after seconds)
    └── InsufficientStorage       507  insufficient_storage

The audio package raises ``ParameterError`` and ``DecodeError`` without
knowing anything of HTTP; ``init_app`` registers the handlers that answer
them, and every other ``HTTPException``, as ``{"error", "message"}`` JSON.

What a client does wrong is the client's business, not a fault of the
server: it is answered, and logged (if at all) as a WARNING through
``CLIENT_FAULTS``, which lets a few lines a minute through, so that a flood
of bad requests cannot flood the log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed

if TYPE_CHECKING:
    from flask import Flask, Response

logger = logging.getLogger(__name__)


class AudioServerError(Exception):
    """An error caused by what a client sent or asked for."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        """Return the JSON body of this error."""
        return {"error": self.code, "message": self.message, **self.extra}


class BadRequest(AudioServerError):
    """The request is malformed or misses something required."""


class ParameterError(BadRequest):
    """A parameter (of the upload or of a pipeline step) is invalid."""

    code = "invalid_parameter"


class TaskNotFound(AudioServerError):
    """No task has this id (or it was deleted)."""

    status = 404
    code = "task_not_found"


class UploadTimeout(AudioServerError):
    """The upload's body stopped arriving: nothing came for the configured time."""

    status = 408
    code = "upload_timeout"


class TaskConflict(AudioServerError):
    """The task is in a state that does not allow the request."""

    status = 409
    code = "task_conflict"


class PayloadTooLarge(AudioServerError):
    """The upload is larger than the configured limit."""

    status = 413
    code = "too_large"


class UnsupportedMedia(AudioServerError):
    """The upload is not audio the server can decode."""

    status = 415
    code = "not_audio"


class DecodeError(UnsupportedMedia):
    """ffmpeg could not decode the upload (its own error line is in the message)."""


class AtCapacity(AudioServerError):
    """Too many tasks are running and waiting; the client should retry later."""

    status = 503
    code = "at_capacity"

    def __init__(self, message: str, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = retry_after


class InsufficientStorage(AudioServerError):
    """The data directory's disk cannot hold the upload, or what its task would write."""

    status = 507
    code = "insufficient_storage"


class FaultLog:
    """WARNING lines about clients' faults: at most ``burst`` of them every ``period`` seconds.

    The lines left out are counted, and the next line that is let through
    says how many there were.
    """

    def __init__(self, *, burst: int = 10, period: float = 60.0) -> None:
        self.burst = burst
        self.period = period
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start afresh: a new period, nothing left out."""
        with self._lock:
            self._window_start = -self.period
            self._written = 0
            self._left_out = 0

    def warning(self, log: logging.Logger, message: str, *args: Any) -> bool:
        """Log message at WARNING unless this period's lines are used up; return whether it was."""
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self.period:
                self._window_start, self._written = now, 0
            if self._written >= self.burst:
                self._left_out += 1
                return False
            self._written += 1
            left_out, self._left_out = self._left_out, 0
        if left_out:
            message += f" ({left_out} similar lines left out before this one)"
        log.warning(message, *args)
        return True


CLIENT_FAULTS = FaultLog()


# Plain-words messages for the HTTP errors Flask/Werkzeug raise themselves.
_HTTP_MESSAGES = {
    404: "There is nothing at this address. See GET /openapi.json for the endpoints.",
    405: "This endpoint does not accept that method. See GET /openapi.json.",
    413: "The upload is larger than the server accepts.",
}


def error_response(status: int, code: str, message: str, /, **extra: Any) -> Response:
    """Return a Flask JSON response for an error (and count it in the metrics)."""
    from flask import current_app, jsonify

    metrics = current_app.extensions.get("metrics")
    if metrics is not None:
        metrics.error_answered(status, code)
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response


def _handle_server_error(error: AudioServerError) -> Response:
    response = error_response(error.status, error.code, error.message, **error.extra)
    if isinstance(error, AtCapacity):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def _handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "_")
    message = _HTTP_MESSAGES.get(status) or error.description or error.name
    if status == 413:
        from flask import current_app

        limit_mb = current_app.config["MAX_UPLOAD_MB"]
        message = (
            f"The upload is larger than the server's limit of {limit_mb:g} MB. "
            "Send a smaller or more compressed file."
        )
        code = "too_large"
    response = error_response(status, code, message)
    if status == 405 and isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _handle_unexpected(error: Exception) -> Response:
    logger.exception("unhandled error while answering a request")
    return error_response(
        500, "internal_error", "The server failed unexpectedly; the error is logged."
    )


def init_app(app: Flask) -> None:
    """Register the JSON error handlers on a Flask app."""
    app.register_error_handler(AudioServerError, _handle_server_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
