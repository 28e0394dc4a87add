"""The server's exceptions: what a client can get wrong, with its HTTP status and code.

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

This module knows nothing of Flask or Werkzeug: the audio package and the
engine raise these, and ``errors.py`` turns them into JSON answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .messages import ErrorBody  # only for mypy: messages imports the audio package


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

    def to_json(self) -> ErrorBody:
        """Return the JSON body of this error (extra holds its optional keys: step, status...)."""
        return cast("ErrorBody", {"error": self.code, "message": self.message, **self.extra})


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
