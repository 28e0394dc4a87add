"""The OpenAPI 3.1 document of the HTTP API, served as ``GET /openapi.json``.

It is plain Python data, built from the same definitions the server uses
(the step catalogue, the result formats, the pipeline limits), so the step
names and formats cannot drift from the code. ``tests/test_openapi.py``
validates it, checks that it lists every route of the app, and runs
schemathesis against a live server to check that every answer matches it.
"""

from __future__ import annotations

from typing import Any

from .audio.encoders import FORMATS
from .audio.pipeline import DEFAULT_PIPELINE, MAX_STEPS
from .audio.steps import catalogue
from .task import Status

OPENAPI_VERSION = "3.1.0"

STATUSES = [str(status) for status in Status]

_DESCRIPTION = """\
Upload an audio file; the server processes it in chunks, in parallel, and
streams each processed chunk back over Socket.IO (namespace `/`, events
`audio_chunk`, `processing_complete`, `processing_stopped`,
`processing_error`; see the README). This document covers the HTTP side.

Every error is JSON, `{"error": code, "message": ...}` (the `Error`
schema), never HTML: an unknown path is a 404 (`not_found`), and a path
that exists answers a method it does not list with a 405
(`method_not_allowed`) and an `Allow` header. `HEAD` and `OPTIONS` are
answered for every path. No error answers 500 for anything a client sent.
"""


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

_DB = {"type": "number", "description": "dB; -120 stands for digital silence (JSON has no -inf)"}


def _schemas(chunk_seconds: tuple[float, float, float]) -> dict[str, Any]:
    low, high, default = chunk_seconds
    step_names = [step.name for step in catalogue()]
    nullable_number = {"type": ["number", "null"]}
    return {
        "Error": {
            "type": "object",
            "description": (
                "Every error answer. Codes: missing_file, empty_filename, too_many_files, "
                "invalid_parameter, invalid_pipeline, pipeline_too_costly, bad_json, "
                "bad_multipart, bad_host, bad_request, bad_packet (400); task_not_found, "
                "not_found (404); method_not_allowed (405); upload_timeout (408); "
                "task_finished, task_not_ready, task_failed, result_unavailable (409); "
                "too_large, form_too_large, too_much_audio (413); uri_too_long (414); "
                "not_audio (415); headers_too_large (431); at_capacity (503); "
                "insufficient_storage (507)."
            ),
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "description": "a short machine-readable code"},
                "message": {"type": "string", "description": "what went wrong and what to do"},
                "step": {"type": "string", "description": "pipeline errors: the step"},
                "parameter": {"type": "string", "description": "the parameter at fault"},
                "position": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "pipeline errors: the step's position, from 1",
                },
                "status": {
                    "type": "string",
                    "enum": STATUSES,
                    "description": "409s: the task's status",
                },
            },
        },
        "PipelineStep": {
            "type": "object",
            "description": "A step in the normalised JSON form: its name and every parameter.",
            "required": ["step"],
            "properties": {"step": {"type": "string", "enum": step_names}},
            "additionalProperties": {"type": "number"},
        },
        "Summary": {
            "type": "object",
            "description": "EBU R128 figures of the output as written; null where one does not "
            "exist (silence, or shorter than 400 ms / 3 s).",
            "required": [
                "integrated_lufs",
                "true_peak_db",
                "sample_peak_db",
                "loudness_range_lu",
                "duration",
            ],
            "properties": {
                "integrated_lufs": nullable_number,
                "true_peak_db": _DB,
                "sample_peak_db": _DB,
                "loudness_range_lu": nullable_number,
                "duration": {"type": "number", "minimum": 0},
                "steps": {
                    "type": "array",
                    "description": "what each global step measured and did",
                    "items": {
                        "type": "object",
                        "required": ["step"],
                        "properties": {"step": {"type": "string", "enum": step_names}},
                    },
                },
            },
        },
        "Task": {
            "type": "object",
            "required": [
                "task_id",
                "status",
                "filename",
                "duration",
                "sample_rate",
                "channels",
                "input",
                "chunk_seconds",
                "chunks_total",
                "chunks_done",
                "progress",
                "pipeline",
                "format",
                "stream_audio",
                "workers",
                "created_at",
                "started_at",
                "finished_at",
                "elapsed",
                "error",
                "summary",
                "links",
            ],
            "properties": {
                "task_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "status": {"type": "string", "enum": STATUSES},
                "filename": {"type": "string", "description": "the uploaded name, for display"},
                "duration": {
                    "type": ["number", "null"],
                    "description": "seconds; the container's estimate until decoding ends",
                },
                "sample_rate": {"type": "integer", "description": "of the output"},
                "channels": {"type": "integer", "description": "of the output"},
                "input": {
                    "type": "object",
                    "required": ["sample_rate", "channels", "codec", "duration"],
                    "properties": {
                        "sample_rate": {"type": "integer"},
                        "channels": {"type": "integer"},
                        "codec": {"type": ["string", "null"]},
                        "duration": nullable_number,
                    },
                },
                "chunk_seconds": {"type": "number", "minimum": low, "maximum": high},
                "chunks_total": {
                    "type": ["integer", "null"],
                    "description": "an estimate until decoding ends, then exact",
                },
                "chunks_done": {"type": "integer", "minimum": 0},
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "pipeline": {"type": "array", "items": _ref("PipelineStep")},
                "format": {"type": "string", "enum": list(FORMATS)},
                "stream_audio": {"type": "boolean"},
                "workers": {"type": "integer", "minimum": 1},
                "created_at": {"type": "string", "format": "date-time"},
                "started_at": {"type": ["string", "null"], "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time"},
                "elapsed": {"type": "number", "minimum": 0},
                "error": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["error", "message"],
                            "properties": {
                                "error": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    ]
                },
                "summary": {"oneOf": [{"type": "null"}, _ref("Summary")]},
                "links": {
                    "type": "object",
                    "required": ["status", "result", "stop"],
                    "properties": {
                        "status": {"type": "string"},
                        "result": {"type": "string"},
                        "stop": {"type": "string"},
                    },
                },
            },
        },
        "Upload": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {
                    "type": "string",
                    "format": "binary",
                    "description": "the audio file (any container and codec ffmpeg decodes)",
                },
                "pipeline": {
                    "type": "string",
                    "description": (
                        "The steps, in order: text (`highpass=freq=80:order=4,normalize`; steps "
                        "separated by `,`, options by `:`) or a JSON array "
                        '(`[{"step": "highpass", "freq": 80}]`). Absent: '
                        f"`{DEFAULT_PIPELINE}`; empty: no steps. At most {MAX_STEPS} steps; "
                        f"steps: {', '.join(step_names)} (GET /pipeline/steps)."
                    ),
                    "examples": [step.example or step.name for step in catalogue()],
                },
                "chunk_seconds": {
                    "type": "number",
                    "minimum": low,
                    "maximum": high,
                    "default": default,
                },
                "format": {"type": "string", "enum": list(FORMATS), "default": "wav"},
                "sid": {
                    "type": "string",
                    "maxLength": 64,
                    "description": "a connected Socket.IO client's id, subscribed from chunk 0",
                },
                "stream_audio": {
                    "type": "boolean",
                    "default": True,
                    "description": "false leaves `audio` out of `audio_chunk` events",
                },
            },
        },
        "Stopped": {
            "type": "object",
            "required": ["message", "task_id", "status"],
            "properties": {
                "message": {"type": "string"},
                "task_id": {"type": "string"},
                "status": {"const": "stopped"},
            },
        },
        "Deleted": {
            "type": "object",
            "required": ["message", "task_id"],
            "properties": {"message": {"type": "string"}, "task_id": {"type": "string"}},
        },
        "Waveform": {
            "type": "object",
            "description": "BBC audiowaveform JSON, version 2, as peaks.js reads it "
            "(`waveformData: {json: ...}`): min/max pairs over all channels, 100 a second.",
            "required": ["version", "channels", "sample_rate", "samples_per_pixel", "bits"],
            "properties": {
                "version": {"const": 2},
                "channels": {"const": 1},
                "sample_rate": {"type": "integer"},
                "samples_per_pixel": {"type": "integer"},
                "bits": {"const": 8},
                "length": {"type": "integer", "minimum": 0},
                "data": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "StepCatalogue": {
            "type": "object",
            "required": ["steps", "max_steps", "default_pipeline", "chunk_seconds", "formats"],
            "properties": {
                "steps": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "description", "kind", "parameters", "example"],
                        "properties": {
                            "name": {"type": "string", "enum": step_names},
                            "description": {"type": "string"},
                            "kind": {"type": "string"},
                            "parameters": {"type": "array", "items": _ref("StepParameter")},
                            "example": {"type": "string"},
                        },
                    },
                },
                "max_steps": {"type": "integer"},
                "default_pipeline": {"type": "string"},
                "chunk_seconds": {
                    "type": "object",
                    "required": ["min", "max", "default"],
                    "properties": {
                        "min": {"type": "number"},
                        "max": {"type": "number"},
                        "default": {"type": "number"},
                    },
                },
                "formats": {
                    "type": "object",
                    "description": "result format name: its media type",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "StepParameter": {
            "type": "object",
            "required": ["name", "type", "default", "required", "min", "max", "unit"],
            "properties": {
                "name": {"type": "string"},
                "type": {"enum": ["number", "integer"]},
                "default": {"type": ["number", "null"], "description": "null: required"},
                "required": {"type": "boolean"},
                "min": {"type": "number"},
                "max": {"type": "number"},
                "max_rate_fraction": {
                    "type": "number",
                    "description": "the upper bound as a fraction of the sample rate",
                },
                "unit": {"type": "string"},
                "description": {"type": "string"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "workers", "active_tasks", "queued_tasks"],
            "properties": {
                "status": {
                    "enum": ["ok", "degraded"],
                    "description": "degraded: a cluster's web instance that cannot reach Redis",
                },
                "workers": {"type": "integer", "minimum": 1},
                "active_tasks": {"type": "integer", "minimum": 0},
                "queued_tasks": {"type": "integer", "minimum": 0},
                "redis": {
                    "enum": ["ok", "unreachable"],
                    "description": "cluster mode only: whether this instance reaches Redis",
                },
                "cluster_workers": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "cluster mode only: workers whose heartbeat is in Redis",
                },
            },
        },
    }


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
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["task_id"],
                                "properties": {"task_id": {"type": "string"}},
                            }
                        }
                    },
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
            "description": _DESCRIPTION,
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
