"""The OpenAPI 3.1 document of the HTTP API, served as ``GET /openapi.json``.

It is plain Python data, built from the same definitions the server uses: its
schemas are the typed models of ``messages.py`` (the Socket.IO events' too),
with the step catalogue's names and the configured bounds, so they cannot
drift from the code. ``tests/test_openapi.py``
validates it, checks that it lists every route of the app, and runs
schemathesis against a live server to check that every answer matches it.
"""

from __future__ import annotations

from typing import Any

from . import messages
from .audio.encoders import FORMATS
from .audio.steps import catalogue
from .schemas import component_schemas

OPENAPI_VERSION = "3.1.0"

_DESCRIPTION = """\
Upload an audio file; the server processes it in chunks, in parallel, and
streams each processed chunk back over Socket.IO (namespace `/`; see the
README). This document covers the HTTP side, and the Socket.IO events' data
in `components.schemas`: the server sends {server_events}; a client sends
{client_events}, each acknowledged with its ack, or an `ErrorAck`.

Every error is JSON, `{{"error": code, "message": ...}}` (the `Error`
schema), never HTML: an unknown path is a 404 (`not_found`), and a path
that exists answers a method it does not list with a 405
(`method_not_allowed`) and an `Allow` header. `HEAD` and `OPTIONS` are
answered for every path. No error answers 500 for anything a client sent.
"""


def _description() -> str:
    """The document's introduction, with each Socket.IO event and the schema of its data."""
    server_events = ", ".join(f"`{name}` (`{schema}`)" for name, schema in messages.EVENTS.items())
    client_events = ", ".join(
        f"`{name}` (`{data}`, ack `{ack}`)" for name, (data, ack) in messages.CLIENT_EVENTS.items()
    )
    return _DESCRIPTION.format(server_events=server_events, client_events=client_events)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _errors(*statuses: int) -> dict[str, Any]:
    """The error answers of an operation, by status."""
    return {
        str(status): {"$ref": f"#/components/responses/{_ERROR_NAMES[status]}"}
        for status in statuses
    }


_ERROR_NAMES = {
    400: "BadRequest",
    404: "NotFound",
    408: "UploadTimeout",
    409: "Conflict",
    413: "TooLarge",
    415: "NotAudio",
    503: "AtCapacity",
    507: "InsufficientStorage",
}

_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "The task's id (32 hex digits, as `task_id` in the upload's answer).",
    "schema": {"type": "string"},
    "example": "5cc6b0e1a4d94c0e9b3a1f6e2d7c8b90",
}


def _schemas(chunk_seconds: tuple[float, float, float]) -> dict[str, Any]:
    """components.schemas: every model of messages.py (the events' too), with today's steps."""
    low, high, default = chunk_seconds
    steps = catalogue()
    names = [step.name for step in steps]
    given = {
        "step_names": names,
        "step_list": ", ".join(names),
        "step_examples": [step.example or step.name for step in steps],
        "chunk_seconds_min": low,
        "chunk_seconds_max": high,
        "chunk_seconds_default": default,
    }
    return component_schemas(messages.COMPONENTS, given=given)


def _error_response(description: str, **extra: Any) -> dict[str, Any]:
    return _json(_ref("Error"), description, **extra)


_RESPONSES = {
    "BadRequest": _error_response(
        "The request is malformed or a parameter is invalid (the body names it)."
    ),
    "NotFound": _error_response("No task has this id (it may have been deleted)."),
    "Conflict": _json(
        {"allOf": [_ref("Error"), {"required": ["status"]}]},
        "The task's status does not allow this (the body has `status`).",
    ),
    "UploadTimeout": _error_response(
        "The upload's body sent nothing for UPLOAD_TIMEOUT_SECONDS and was cut off."
    ),
    "TooLarge": _error_response(
        "The upload is larger than the server's limit (MAX_UPLOAD_MB), or its form has more "
        "than 16 parts (form_too_large)."
    ),
    "NotAudio": _error_response(
        "The upload is not audio ffmpeg can decode, or has no audio stream (ffmpeg's reason is "
        "in the message)."
    ),
    "AtCapacity": _error_response(
        "Too many tasks are running and waiting, or too many uploads are being received "
        "(MAX_UPLOADS); retry after `Retry-After` seconds.",
        headers={
            "Retry-After": {
                "required": True,
                "description": "seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    ),
    "InsufficientStorage": _error_response(
        "The data folder's disk cannot hold the upload, or what its task would write, and keep "
        "DISK_RESERVE_MB free."
    ),
}


def _result_responses() -> dict[str, Any]:
    media_types = sorted({spec.mime_type for spec in FORMATS.values()})
    audio = {mime: {"schema": {"type": "string", "format": "binary"}} for mime in media_types}
    disposition = {
        "description": 'attachment; filename="<stem>_processed.<ext>" (and filename* in UTF-8 '
        "when the name is not ASCII)",
        "schema": {"type": "string"},
    }
    return {
        "200": {
            "description": "The processed file, in the task's format (for a stopped task, the "
            "chunks emitted before the stop).",
            "headers": {
                "Content-Disposition": {**disposition, "required": True},
                "Accept-Ranges": {"schema": {"const": "bytes"}},
            },
            "content": audio,
        },
        "206": {
            "description": "The requested byte range of the file.",
            "headers": {
                "Content-Range": {"required": True, "schema": {"type": "string"}},
                "Content-Disposition": disposition,
            },
            "content": audio,
        },
        "304": {"description": "Not modified (If-None-Match / If-Modified-Since)."},
        "416": {"description": "The range is outside the file."},
        **_errors(404, 409),
    }


def _task_links() -> dict[str, Any]:
    """What a new task's id leads to (OpenAPI links: clients and stateful testers follow them)."""
    task_id = "$response.body#/task_id"
    links = {
        name: {"operationId": name, "parameters": {"task_id": task_id}}
        for name in ("task", "result", "waveform", "delete")
    }
    links["stop"] = {"operationId": "stop", "requestBody": {"task_id": task_id}}
    return links


def _paths() -> dict[str, Any]:
    return {
        "/": {
            "get": {
                "operationId": "page",
                "tags": ["page"],
                "summary": "The upload page",
                "responses": {
                    "200": {
                        "description": "The HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/static/{filename}": {
            "get": {
                "operationId": "static",
                "tags": ["page"],
                "summary": "The page's scripts and style sheet",
                "parameters": [
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "description": "a file under the static folder (may hold /)",
                        "schema": {"type": "string"},
                        "example": "style.css",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "304": {"description": "Not modified"},
                    **_errors(404),
                },
            }
        },
        "/upload": {
            "post": {
                "operationId": "upload",
                "tags": ["tasks"],
                "summary": "Upload a file and start processing it",
                "description": "Answers once the file is stored and its first samples decoded "
                "(so a file that is not audio is a 415 at once); processing goes on after.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": _ref("Upload"),
                            "encoding": {"file": {"contentType": "audio/*, video/*, */*"}},
                        }
                    },
                },
                "responses": {
                    "202": _json(
                        _ref("Task"),
                        "The task, queued or processing",
                        headers={
                            "Location": {
                                "required": True,
                                "description": "/tasks/<task_id>",
                                "schema": {"type": "string"},
                            }
                        },
                        links=_task_links(),
                    ),
                    **_errors(400, 408, 413, 415, 503, 507),
                },
            }
        },
        "/stop-processing": {
            "post": {
                "operationId": "stop",
                "tags": ["tasks"],
                "summary": "Stop a task",
                "description": "Its result keeps the chunks emitted before the stop. Stopping a "
                "stopped task again is a 200 too.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("TaskRef")}},
                },
                "responses": {
                    "200": _json(_ref("Stopped"), "The task is stopped"),
                    **_errors(400, 404, 409, 413),
                },
            }
        },
        "/tasks/{task_id}": {
            "parameters": [_TASK_ID],
            "get": {
                "operationId": "task",
                "tags": ["tasks"],
                "summary": "A task's status and progress",
                "responses": {"200": _json(_ref("Task"), "The task"), **_errors(404)},
            },
            "delete": {
                "operationId": "delete",
                "tags": ["tasks"],
                "summary": "Stop a task if it runs and delete it with its files",
                "responses": {"200": _json(_ref("Deleted"), "The task is deleted"), **_errors(404)},
            },
        },
        "/tasks/{task_id}/result": {
            "parameters": [_TASK_ID],
            "get": {
                "operationId": "result",
                "tags": ["tasks"],
                "summary": "The processed file",
                "description": "Ready once the task completed or was stopped (a stopped task's "
                "result is encoded when the stop comes; this waits up to 60 s for it). Range "
                "requests are supported. 409 while queued or processing, or when it failed.",
                "parameters": [
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "description": "a byte range, e.g. bytes=0-1023",
                        "schema": {"type": "string", "pattern": "^bytes=[0-9]*-[0-9]*$"},
                    }
                ],
                "responses": _result_responses(),
            },
        },
        "/tasks/{task_id}/waveform.json": {
            "parameters": [_TASK_ID],
            "get": {
                "operationId": "waveform",
                "tags": ["tasks"],
                "summary": "The output's waveform for peaks.js",
                "responses": {
                    "200": _json(_ref("Waveform"), "The waveform (completed or stopped tasks)"),
                    **_errors(404, 409),
                },
            },
        },
        "/pipeline/steps": {
            "get": {
                "operationId": "steps",
                "tags": ["service"],
                "summary": "The catalogue of processing steps",
                "responses": {"200": _json(_ref("StepCatalogue"), "Steps, limits and formats")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "tags": ["service"],
                "summary": "Liveness, workers and the task queue",
                "responses": {"200": _json(_ref("Health"), "The server is up")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["service"],
                "summary": "Prometheus metrics",
                "description": "Tasks by outcome, chunk processing time histogram, audio "
                "seconds processed, queue depth.",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["service"],
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 document")},
            }
        },
    }


def document(*, chunk_seconds: tuple[float, float, float]) -> dict[str, Any]:
    """Return the OpenAPI document of every HTTP endpoint (chunk_seconds: min, max, default)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Audio processing server",
            "version": "1",
            "description": _description(),
        },
        "tags": [
            {"name": "tasks", "description": "Upload, follow, stop, download, delete"},
            {"name": "service", "description": "Catalogue, health, metrics, this document"},
            {"name": "page", "description": "The browser page"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(chunk_seconds),
            "responses": _RESPONSES,
        },
    }
