"""The one place that turns the server's exceptions into JSON answers, and client faults' log.

The exceptions themselves live in ``exceptions.py`` (no Flask there, so the
audio package can raise them); ``init_app`` registers the handlers that
answer them, and every other ``HTTPException``, as ``{"error", "message"}``
JSON.

What a client does wrong is the client's business, not a fault of the
server: it is answered, and logged (if at all) as a WARNING through
``CLIENT_FAULTS``, which lets a few lines a minute through, so that a flood
of bad requests cannot flood the log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .exceptions import (
    AtCapacity,
    AudioServerError,
    BadRequest,
    DecodeError,
    InsufficientStorage,
    ParameterError,
    PayloadTooLarge,
    TaskConflict,
    TaskNotFound,
    UnsupportedMedia,
    UploadTimeout,
)

if TYPE_CHECKING:
    from flask import Flask, Response

    from .messages import ErrorBody

logger = logging.getLogger(__name__)


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
    body = cast("ErrorBody", {"error": code, "message": message, **extra})  # extra: its options
    response = jsonify(body)
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


__all__ = [
    "CLIENT_FAULTS",
    "AtCapacity",
    "AudioServerError",
    "BadRequest",
    "DecodeError",
    "InsufficientStorage",
    "ParameterError",
    "PayloadTooLarge",
    "TaskConflict",
    "TaskNotFound",
    "UnsupportedMedia",
    "UploadTimeout",
    "error_response",
    "init_app",
]
