"""The shapes of what the server sends: the task JSON, every JSON answer, every event, errors.

Each is a typed model (a ``TypedDict``, described with ``Annotated`` metadata:
see ``schemas.py``). The code that builds a message returns its model, mypy
checks it, and ``COMPONENTS`` publishes them all, by name, as the JSON Schemas
of ``GET /openapi.json`` (``components.schemas``), the Socket.IO events' too.
``tests/test_messages.py`` holds a live server to them.

Values known only when the document is built are ``Given``: ``step_names``,
``step_list`` (the names as text), ``step_examples``, and ``chunk_seconds_min``,
``chunk_seconds_max``, ``chunk_seconds_default``.
"""

# No `from __future__ import annotations` here: on Python 3.11, TypedDict sees
# Required/NotRequired only in annotations that are evaluated.

from typing import Annotated, Any, Literal, NotRequired, TypedDict

from .audio.analysis import SPECTRUM_BANDS
from .audio.encoders import FORMATS
from .audio.pipeline import DEFAULT_PIPELINE, MAX_STEPS
from .schemas import Doc, ExtraKeys, Given, Schema, SchemaOf
from .task import Status

JsonObject = dict[str, Any]

# -- small shared types ------------------------------------------------------------------------

TaskId = Annotated[str, Doc("the task's id (uuid4 hex)"), Schema(pattern="^[0-9a-f]{32}$")]
StatusName = Annotated[str, Schema(enum=[str(status) for status in Status])]
FormatName = Annotated[str, Schema(enum=list(FORMATS))]
StepName = Annotated[str, Schema(enum=Given("step_names"))]
Db = Annotated[float, Doc("dB; -120 stands for digital silence (JSON has no -inf)")]
Count = Annotated[int, Schema(minimum=0)]
Seconds = Annotated[float, Schema(minimum=0)]
Moment = Annotated[str, Schema(format="date-time")]
Progress = Annotated[float, Schema(minimum=0, maximum=1)]
ChunkSeconds = Annotated[
    float, Schema(minimum=Given("chunk_seconds_min"), maximum=Given("chunk_seconds_max"))
]


# -- errors ------------------------------------------------------------------------------------


class ErrorBody(TypedDict):
    """Every error answer. Codes: missing_file, empty_filename, too_many_files,
    invalid_parameter, invalid_pipeline, pipeline_too_costly, bad_json, bad_multipart,
    bad_host, bad_request, bad_packet (400); task_not_found, not_found (404);
    method_not_allowed (405); upload_timeout (408); task_finished, task_not_ready,
    task_failed, result_unavailable (409); too_large, form_too_large, too_much_audio
    (413); uri_too_long (414); not_audio (415); headers_too_large (431); at_capacity
    (503); insufficient_storage (507).
    """

    error: Annotated[str, Doc("a short machine-readable code")]
    message: Annotated[str, Doc("what went wrong and what to do")]
    step: Annotated[NotRequired[str], Doc("pipeline errors: the step")]
    parameter: Annotated[NotRequired[str], Doc("the parameter at fault")]
    position: Annotated[
        NotRequired[int], Doc("pipeline errors: the step's position, from 1"), Schema(minimum=1)
    ]
    status: Annotated[NotRequired[StatusName], Doc("409s: the task's status")]


class TaskError(TypedDict):
    """Why a task failed."""

    error: Annotated[str, Doc("a short machine-readable code")]
    message: Annotated[str, Doc("what went wrong")]


class TaskWarning(TypedDict):
    """What went wrong without failing the task (truncated, not_finite, encode_failed)."""

    warning: Annotated[str, Doc("a short machine-readable code")]
    message: Annotated[str, Doc("what happened, in words")]
    format: Annotated[NotRequired[FormatName], Doc("encode_failed: the format that failed")]


# -- the task JSON -----------------------------------------------------------------------------


class PipelineStep(TypedDict):
    """A step in the normalised JSON form: its name and every parameter."""

    step: StepName


class StepReport(TypedDict):
    """What a global step measured and did (its other keys depend on the step)."""

    step: StepName


class Summary(TypedDict):
    """EBU R128 figures of the output as written; null where one does not exist
    (silence, or shorter than 400 ms / 3 s)."""

    integrated_lufs: Annotated[float | None, Doc("integrated loudness (ITU-R BS.1770-4), LUFS")]
    true_peak_db: Db
    sample_peak_db: Db
    loudness_range_lu: Annotated[float | None, Doc("loudness range (EBU Tech 3342), LU")]
    duration: Annotated[Seconds, Doc("seconds of output")]
    steps: Annotated[NotRequired[list[StepReport]], Doc("what each global step measured and did")]


class InputInfo(TypedDict):
    """The upload as decoded (the task's top-level sample_rate and channels are the output's)."""

    sample_rate: int
    channels: int
    codec: str | None
    duration: Annotated[float | None, Doc("seconds; the container's estimate")]


class TaskLinks(TypedDict):
    """Where to follow, download and stop the task."""

    status: str
    result: str
    stop: str


class TaskJson(TypedDict):
    """A task: its status, progress, options, and once finished its summary."""

    task_id: TaskId
    status: StatusName
    filename: Annotated[str, Doc("the uploaded name, for display")]
    duration: Annotated[float | None, Doc("seconds; the container's estimate until decoding ends")]
    sample_rate: Annotated[int, Doc("of the output")]
    channels: Annotated[int, Doc("of the output")]
    input: InputInfo
    chunk_seconds: ChunkSeconds
    chunks_total: Annotated[int | None, Doc("an estimate until decoding ends, then exact")]
    chunks_done: Count
    progress: Annotated[Progress, Doc("of all the stages' work")]
    pipeline: Annotated[list[JsonObject], SchemaOf(list[PipelineStep])]
    format: FormatName
    stream_audio: bool
    workers: Annotated[int, Schema(minimum=1)]
    # A task always has one; the Python type says None as iso() takes None.
    created_at: Annotated[str | None, SchemaOf(Moment)]
    started_at: Moment | None
    finished_at: Moment | None
    elapsed: Annotated[Seconds, Doc("seconds since processing started")]
    # Loose Python types where Task's attributes are still plain dicts.
    error: Annotated[
        dict[str, str] | None, SchemaOf(TaskError | None), Doc("null, or why it failed")
    ]
    warnings: Annotated[list[dict[str, str]], SchemaOf(list[TaskWarning])]
    summary: Annotated[
        JsonObject | None, SchemaOf(Summary | None), Doc("null until the task has finished")
    ]
    links: TaskLinks


# -- the other JSON answers --------------------------------------------------------------------


class Stopped(TypedDict):
    """POST /stop-processing: the task is stopped."""

    message: str
    task_id: str
    status: Literal["stopped"]


class Deleted(TypedDict):
    """DELETE /tasks/<task_id>: the task and its files are gone."""

    message: str
    task_id: str


class Waveform(TypedDict):
    """BBC audiowaveform JSON, version 2, as peaks.js reads it (`waveformData: {json: ...}`):
    min/max pairs over all channels, 100 a second."""

    version: Literal[2]
    channels: Literal[1]
    sample_rate: int
    samples_per_pixel: int
    bits: Literal[8]
    length: Count
    data: list[int]


class StepParameter(TypedDict):
    """A parameter of a step: its type, default and range."""

    name: str
    type: Literal["number", "integer"]
    default: Annotated[float | None, Doc("null: required")]
    required: bool
    min: float
    max: float
    max_rate_fraction: Annotated[
        NotRequired[float], Doc("the upper bound as a fraction of the sample rate")
    ]
    unit: str
    description: NotRequired[str]


class StepInfo(TypedDict):
    """A step of the catalogue."""

    name: StepName
    description: str
    kind: str
    parameters: list[StepParameter]
    example: str


class ChunkSecondsRange(TypedDict):
    """The bounds and default of chunk_seconds."""

    min: float
    max: float
    default: float


class StepCatalogue(TypedDict):
    """GET /pipeline/steps: the steps, the limits and the result formats."""

    steps: Annotated[list[JsonObject], SchemaOf(list[StepInfo])]
    max_steps: int
    default_pipeline: str
    chunk_seconds: ChunkSecondsRange
    formats: Annotated[dict[str, str], Doc("result format name: its media type")]
    max_upload_bytes: Annotated[int | None, Doc("the largest upload accepted, in bytes")]


class Health(TypedDict):
    """GET /healthz: the server is up."""

    status: Annotated[
        Literal["ok", "degraded"], Doc("degraded: a cluster's web instance that cannot reach Redis")
    ]
    workers: Annotated[int, Schema(minimum=1)]
    active_tasks: Count
    queued_tasks: Count
    redis: Annotated[
        NotRequired[Literal["ok", "unreachable"]],
        Doc("cluster mode only: whether this instance reaches Redis"),
    ]
    cluster_workers: Annotated[
        NotRequired[Count], Doc("cluster mode only: workers whose heartbeat is in Redis")
    ]


# -- requests ----------------------------------------------------------------------------------


class Upload(TypedDict):
    """POST /upload's multipart form."""

    file: Annotated[bytes, Doc("the audio file (any container and codec ffmpeg decodes)")]
    pipeline: Annotated[
        NotRequired[str],
        Doc(
            "The steps, in order: text (`highpass=freq=80:order=4,normalize`; steps separated "
            'by `,`, options by `:`) or a JSON array (`[{"step": "highpass", "freq": 80}]`). '
            f"Absent: `{DEFAULT_PIPELINE}`; empty: no steps. At most {MAX_STEPS} steps; "
            "steps: $step_list (GET /pipeline/steps)."
        ),
        Schema(examples=Given("step_examples")),
    ]
    chunk_seconds: Annotated[
        NotRequired[ChunkSeconds], Schema(default=Given("chunk_seconds_default"))
    ]
    format: Annotated[NotRequired[FormatName], Schema(default="wav")]
    sid: Annotated[
        NotRequired[str],
        Doc("a connected Socket.IO client's id, subscribed from chunk 0"),
        Schema(maxLength=64),
    ]
    stream_audio: Annotated[
        NotRequired[bool],
        Doc("false leaves `audio` out of `audio_chunk` events"),
        Schema(default=True),
    ]


class TaskRef(TypedDict):
    """POST /stop-processing's body, and the data of the unsubscribe and stop events."""

    task_id: str


class SubscribeRequest(TypedDict):
    """The subscribe event's data."""

    task_id: str
    from_index: Annotated[
        NotRequired[int],
        Doc("the first chunk to replay (at most the chunks produced so far)"),
        Schema(minimum=0, default=0),
    ]


# -- Socket.IO: what the server sends ----------------------------------------------------------


class AudioChunkEvent(TypedDict):
    """`audio_chunk`: a processed chunk, to the task's subscribers, in order, each once."""

    task_id: str
    index: Annotated[Count, Doc("0-based, in order")]
    chunks_total: Annotated[int | None, Doc("the best estimate until the end, then exact")]
    start: Annotated[Seconds, Doc("seconds, on the output's timeline")]
    duration: Annotated[Seconds, Doc("seconds")]
    sample_rate: int
    channels: int
    peak_db: Db
    rms_db: Db
    waveform: Annotated[
        list[Annotated[list[float], Schema(minItems=2, maxItems=2)]],
        Doc("[min, max] pairs over all channels, 100 a second, -1..1"),
    ]
    spectrum: Annotated[
        list[float],
        Doc(f"{SPECTRUM_BANDS} log-spaced bands from 20 Hz to Nyquist, dBFS"),
        Schema(minItems=SPECTRUM_BANDS, maxItems=SPECTRUM_BANDS),
    ]
    encoding: Literal["pcm_s16le"]
    audio: Annotated[
        NotRequired[bytes],
        Doc(
            "a binary attachment: interleaved 16-bit little-endian PCM of this chunk; "
            "absent when the upload's stream_audio is false"
        ),
    ]
    processing_ms: Annotated[float, Doc("the chunk's processing time, ms"), Schema(minimum=0)]
    worker: Annotated[str, Doc("the pool thread that processed it")]


class ProcessingProgressEvent(TypedDict):
    """`processing_progress`: how far the task is (at most about four a second)."""

    task_id: str
    stage: Annotated[Count, Doc("the stage the count is about (0-based)")]
    stages: Annotated[int, Doc("how many stages there are"), Schema(minimum=1)]
    chunks_done: Annotated[Count, Doc("chunks this stage has processed")]
    chunks_total: Annotated[
        int | None, Doc("the stage's chunk count (an estimate until decoding ends)")
    ]
    progress: Annotated[Progress, Doc("of all the stages' work: the task JSON's progress")]
    chunks_emitted: Annotated[Count, Doc("audio_chunk events sent before this one")]
    duration: Annotated[float | None, Doc("the input's duration as known now, seconds")]
    elapsed: Annotated[Seconds, Doc("seconds since processing started")]


class TerminalCore(TypedDict):
    """What every terminal event carries, whatever the ending."""

    task_id: str
    status: Literal["completed", "stopped", "failed"]
    chunks_emitted: Annotated[Count, Doc("chunks sent before the end (the result holds these)")]
    duration: Annotated[Seconds, Doc("seconds of audio emitted (the result's length)")]
    elapsed: Annotated[Seconds, Doc("seconds from the start of processing to the end")]
    summary: Annotated[
        JsonObject | None,
        SchemaOf(Summary | None),
        Doc("as in the task JSON, or null (a failed task, or a stop before any chunk)"),
    ]
    result_url: Annotated[str | None, Doc("/tasks/<id>/result, or null when there is none")]
    warnings: Annotated[list[dict[str, str]], SchemaOf(list[TaskWarning])]


class ProcessingCompleteEvent(TerminalCore):
    """`processing_complete`: the task completed; its result is ready."""

    chunks: Annotated[Count, Doc("= chunks_emitted")]
    realtime_factor: Annotated[float | None, Doc("seconds of audio per second of processing")]


class ProcessingStoppedEvent(TerminalCore):
    """`processing_stopped`: the task was stopped; the result holds the chunks emitted."""

    reason: Literal["requested", "deleted", "shutdown"]


class ProcessingErrorEvent(TerminalCore):
    """`processing_error`: the task failed."""

    error: Annotated[str, Doc("a short machine-readable code")]
    message: Annotated[str, Doc("what went wrong")]


# -- Socket.IO: the acks of the client's events ------------------------------------------------


class SubscribeAck(TypedDict):
    """The subscribe event's ack: the task as it is now."""

    ok: Literal[True]
    task: TaskJson


class UnsubscribeAck(TypedDict):
    """The unsubscribe event's ack."""

    ok: Literal[True]


class StopAck(Stopped):
    """The stop event's ack (as POST /stop-processing's answer)."""

    ok: Literal[True]


class ErrorAck(ErrorBody):
    """The ack of a client event that failed: the error body, with ok false."""

    ok: Literal[False]


# -- the published schemas ---------------------------------------------------------------------

#: Every model, by its name in the OpenAPI document's components.schemas.
COMPONENTS: dict[str, Any] = {
    "Error": ErrorBody,
    "TaskError": TaskError,
    "TaskWarning": TaskWarning,
    "PipelineStep": Annotated[PipelineStep, ExtraKeys(Annotated[float, Doc("a parameter")])],
    "StepReport": StepReport,
    "Summary": Summary,
    "InputInfo": InputInfo,
    "TaskLinks": TaskLinks,
    "Task": TaskJson,
    "Upload": Upload,
    "TaskRef": TaskRef,
    "Stopped": Stopped,
    "Deleted": Deleted,
    "Waveform": Waveform,
    "StepCatalogue": StepCatalogue,
    "StepInfo": StepInfo,
    "StepParameter": StepParameter,
    "ChunkSecondsRange": ChunkSecondsRange,
    "Health": Health,
    "SubscribeRequest": SubscribeRequest,
    "AudioChunkEvent": AudioChunkEvent,
    "ProcessingProgressEvent": ProcessingProgressEvent,
    "ProcessingCompleteEvent": ProcessingCompleteEvent,
    "ProcessingStoppedEvent": ProcessingStoppedEvent,
    "ProcessingErrorEvent": ProcessingErrorEvent,
    "SubscribeAck": SubscribeAck,
    "UnsubscribeAck": UnsubscribeAck,
    "StopAck": StopAck,
    "ErrorAck": ErrorAck,
}

#: The events the server sends, by name: the component that describes each.
EVENTS = {
    "audio_chunk": "AudioChunkEvent",
    "processing_progress": "ProcessingProgressEvent",
    "processing_complete": "ProcessingCompleteEvent",
    "processing_stopped": "ProcessingStoppedEvent",
    "processing_error": "ProcessingErrorEvent",
}

#: The client's events: the component of their data, and of their ack (besides ErrorAck).
CLIENT_EVENTS = {
    "subscribe": ("SubscribeRequest", "SubscribeAck"),
    "unsubscribe": ("TaskRef", "UnsubscribeAck"),
    "stop": ("TaskRef", "StopAck"),
}
