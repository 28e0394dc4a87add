"""HTTP endpoints: upload, stop, task status, result, delete, the step catalogue, health."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import cast
from urllib.parse import quote

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    send_file,
)
from flask.blueprints import BlueprintSetupState

from . import openapi, uploads
from .audio.encoders import FORMATS
from .audio.pipeline import MAX_STEPS, Pipeline
from .audio.steps import catalogue
from .exceptions import BadRequest, ParameterError
from .messages import Deleted, Health, StepCatalogue, Stopped, TaskJson, Waveform
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .task import Task
from .tasks import TaskEngine, TaskOptions

# Re-exported for create_app: the request class and the uploads folder.
from .uploads import UPLOADS as UPLOADS
from .uploads import UploadRequest as UploadRequest

bp = Blueprint("api", __name__)

CHUNK_SECONDS = (0.25, 60.0, 2.0)  # min, max, default


@bp.record_once
def _set_up_uploads(state: BlueprintSetupState) -> None:
    uploads.init_app(cast(Flask, state.app))  # the blueprint's app: a Flask app


def _engine() -> TaskEngine:
    engine: TaskEngine = current_app.extensions["audio_engine"]
    return engine


# -- reading the upload's parameters -------------------------------------------


def _number(form: Mapping[str, str], name: str, low: float, high: float, default: float) -> float:
    raw = form.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        raise ParameterError(
            f"{name} must be a number from {low:g} to {high:g}, got {raw[:40]!r}.", parameter=name
        )
    return value


def _boolean(form: Mapping[str, str], name: str, default: bool) -> bool:
    raw = form.get(name)
    if raw is None or raw.strip() == "":
        return default
    word = raw.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise ParameterError(f"{name} must be true or false, got {raw[:40]!r}.", parameter=name)


def _format(form: Mapping[str, str]) -> str:
    raw = form.get("format")
    if raw is None or raw.strip() == "":
        return "wav"
    name = raw.strip().lower()
    if name not in FORMATS:
        raise ParameterError(
            f"format must be one of {', '.join(FORMATS)}, got {raw[:40]!r}.", parameter="format"
        )
    return name


def _sid(form: Mapping[str, str]) -> str | None:
    raw = form.get("sid")
    if raw is None or raw == "":
        return None
    if len(raw) > 64 or not raw.isprintable():
        raise ParameterError("sid is not a Socket.IO session id (use socket.id).", parameter="sid")
    return raw


def upload_options(form: Mapping[str, str]) -> TaskOptions:
    """Return the task options of an upload form (raise ParameterError naming the bad one)."""
    return TaskOptions(
        pipeline=Pipeline.parse(form.get("pipeline")),
        chunk_seconds=_number(form, "chunk_seconds", *CHUNK_SECONDS),
        format=_format(form),
        stream_audio=_boolean(form, "stream_audio", True),
    )


def clean_filename(name: str) -> str:
    """Return the uploaded name for display only: no folders, no control characters, 255 at most."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if char.isprintable()).strip()
    return name[:255] or "audio"


# -- endpoints ------------------------------------------------------------------


@bp.get("/")
def index() -> str:
    """The upload page."""
    return render_template("index.html")


@bp.post("/upload")
def upload() -> tuple[TaskJson, int, dict[str, str]]:
    """Accept a file and its options; answer 202 with the task while it is processed."""
    engine = _engine()
    uploads.begin_upload()
    engine.check_capacity()
    options = upload_options(request.form)
    subscriber = _sid(request.form)
    file = request.files.get("file")
    if file is None and not request.files and not request.form and request.content_length:
        # Werkzeug drops a whole multipart body it cannot parse (a part header that is not
        # UTF-8, such as a filename in another encoding) without a word.
        raise BadRequest(
            "The body could not be read as multipart/form-data: a part is malformed (for "
            "example a filename that is not UTF-8). Rename the file, or send its name in UTF-8.",
            code="bad_multipart",
        )
    if file is None:
        raise BadRequest(
            "No file: send the audio as the multipart form field 'file' "
            "(curl -F file=@song.mp3 ...).",
            code="missing_file",
        )
    if not file.filename:
        raise BadRequest(
            "The uploaded file has no filename; choose a file to upload.", code="empty_filename"
        )
    path = Path(file.stream.name)
    with uploads.disk_full_is_507("this upload and its task"):
        file.stream.close()
        task = engine.create(
            path, filename=clean_filename(file.filename), options=options, subscriber=subscriber
        )
    return _describe(engine, task), 202, {"Location": f"/tasks/{task.id}"}


def _describe(engine: TaskEngine, task: Task) -> TaskJson:
    # TaskEngine.describe (tasks.py) is still typed dict[str, Any].
    return engine.describe(task)


def _stop_request_task_id() -> str:
    data = request.get_json(force=True, silent=True)
    if data is None:
        raise BadRequest('The body must be JSON: {"task_id": "..."}.', code="bad_json")
    if not isinstance(data, dict) or not isinstance(data.get("task_id"), str):
        raise BadRequest(
            'The body must be a JSON object with a string task_id: {"task_id": "..."}.',
            code="invalid_parameter",
            parameter="task_id",
        )
    task_id: str = data["task_id"]
    return task_id


@bp.post("/stop-processing")
def stop_processing() -> Stopped:
    """Stop a task; its result keeps the chunks emitted before the stop."""
    task = _engine().stop(_stop_request_task_id())
    return {"message": "Processing stopped", "task_id": task.id, "status": "stopped"}


@bp.get("/tasks/<task_id>")
def task_status(task_id: str) -> TaskJson:
    engine = _engine()
    return _describe(engine, engine.get(task_id))


@bp.get("/tasks/<task_id>/result")
def task_result(task_id: str) -> Response:
    """The processed file (for a stopped task: the chunks emitted before the stop)."""
    engine = _engine()
    task = engine.get(task_id)
    path = engine.result(task)
    # The WAV stands in when encoding the chosen format failed (the task JSON warns).
    spec = FORMATS["wav"] if path == task.store.path else FORMATS[task.options.format]
    response = send_file(path, mimetype=spec.mime_type, conditional=True, max_age=0)
    stem = PurePath(task.filename).stem or "audio"
    response.headers["Content-Disposition"] = attachment(f"{stem}_processed.{spec.extension}")
    return response


@bp.get("/tasks/<task_id>/waveform.json")
def task_waveform(task_id: str) -> Waveform:
    """The output's waveform in BBC audiowaveform JSON (version 2), as peaks.js reads it."""
    engine = _engine()
    # TaskEngine.waveform passes on analysis.audiowaveform's dict[str, Any] (tasks.py).
    return cast(Waveform, engine.waveform(engine.get(task_id)))


def attachment(filename: str) -> str:
    """Return a Content-Disposition header: a quoted ASCII name, and the UTF-8 one if it differs."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = "".join(
        "_" if char in '"\\' or not char.isprintable() else char for char in ascii_name
    )
    header = f'attachment; filename="{ascii_name}"'
    if ascii_name != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header


@bp.delete("/tasks/<task_id>")
def delete_task(task_id: str) -> Deleted:
    """Stop a task if it runs and delete it with its files."""
    _engine().delete(task_id)
    return {"message": "Task deleted", "task_id": task_id}


@bp.get("/pipeline/steps")
def pipeline_steps() -> StepCatalogue:
    """The catalogue of steps, from the step definitions themselves."""
    low, high, default = CHUNK_SECONDS
    return {
        "steps": [step.catalogue() for step in catalogue()],
        "max_steps": MAX_STEPS,
        "default_pipeline": "normalize",
        "chunk_seconds": {"min": low, "max": high, "default": default},
        "formats": {name: spec.mime_type for name, spec in FORMATS.items()},
        "max_upload_bytes": current_app.config["MAX_CONTENT_LENGTH"],
    }


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics: tasks by outcome, queue depth, chunk timings, audio emitted."""
    registry = current_app.extensions["metrics"]
    return Response(registry.render(), mimetype=METRICS_CONTENT_TYPE)


@bp.get("/healthz")
def healthz() -> Health:
    # TaskEngine.health is typed dict[str, Any] (tasks.py).
    return _engine().health()


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of every HTTP endpoint."""
    return jsonify(openapi.document(chunk_seconds=CHUNK_SECONDS))
