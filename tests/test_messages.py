"""The models of messages.py against a live server: every answer, event and ack matches its schema.

The schemas are the ones /openapi.json serves, closed for the test (a key the
model lacks fails too), so a model and the server cannot drift apart either way.
"""

from __future__ import annotations

import copy
import typing
from typing import Any

import pytest
import requests
from helpers import Count
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from jsonschema.validators import extend

from audioserver.messages import COMPONENTS, EVENTS, InputInfo, TaskJson, TaskLinks

# Models whose other keys are documented as open ("its other keys depend on the step").
OPEN_MODELS = {"StepReport"}

FORMATS = FormatChecker()


@FORMATS.checks("binary")
def _is_binary(instance: object) -> bool:
    return isinstance(instance, bytes)


def _type(validator, types, instance, schema):
    """JSON's types, and bytes where the schema says "format": "binary".

    A binary attachment (audio_chunk's audio) reaches python-socketio's client as bytes.
    """
    if isinstance(instance, bytes):
        if schema.get("format") != "binary":
            yield ValidationError(f"binary data where the schema says {schema}")
        return
    yield from Draft202012Validator.VALIDATORS["type"](validator, types, instance, schema)


Validator = extend(Draft202012Validator, validators={"type": _type})


def closed(schemas: dict[str, Any]) -> dict[str, Any]:
    """The document's schemas with every model closed to keys it does not declare."""
    schemas = copy.deepcopy(schemas)
    for name, schema in schemas.items():
        if name not in OPEN_MODELS:
            schema.setdefault("additionalProperties", False)
    return schemas


class Schemas:
    """Validates messages against the served document's components.schemas."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components = closed(document["components"]["schemas"])

    def check(self, name: str, message: Any) -> None:
        """Assert that message matches component name (its $refs resolved in the document)."""
        assert name in self.components, f"no schema {name}"
        root = {"components": {"schemas": self.components}, "$ref": f"#/components/schemas/{name}"}
        errors = [
            f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in Validator(root, format_checker=FORMATS).iter_errors(message)
        ]
        assert not errors, f"{name} does not match the server's message: {errors}"


@pytest.fixture
def server(make_server, test_steps):
    return make_server()


@pytest.fixture
def schemas(server) -> Schemas:
    return Schemas(requests.get(f"{server.url}/openapi.json", timeout=10).json())


@pytest.fixture
def listener(listen, server):
    listener = listen(server.url)
    # The shared Listener records chunks and terminal events; progress is recorded here too.
    listener.client.on("processing_progress", listener._recorder("processing_progress"))
    return listener


def upload(server, audio: bytes, **fields: Any) -> dict[str, Any]:
    response = requests.post(
        f"{server.url}/upload", files={"file": ("song.wav", audio)}, data=fields, timeout=30
    )
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    return task


@pytest.fixture
def wav(audio_file) -> bytes:
    return audio_file(5.0).read_bytes()


def test_a_completed_task_keeps_to_its_schemas(server, schemas, listener, wav):
    task = upload(server, wav, sid=listener.sid, pipeline="loudness=target=-16", chunk_seconds="1")
    schemas.check("Task", task)
    name, _ = listener.wait_end(task["task_id"])
    assert name == "processing_complete"
    events = listener.of_task(task["task_id"])
    names = {name for name, _ in events}
    assert {"audio_chunk", "processing_progress", "processing_complete"} <= names
    for name, data in events:
        schemas.check(EVENTS[name], data)
    chunk = listener.chunks(task["task_id"])[0]
    frames = round(chunk["duration"] * chunk["sample_rate"])
    assert len(chunk["audio"]) == frames * chunk["channels"] * 2
    finished = requests.get(f"{server.url}/tasks/{task['task_id']}", timeout=10).json()
    schemas.check("Task", finished)
    assert finished["summary"]["steps"][0]["step"] == "loudness"

    ack = listener.client.call("subscribe", {"task_id": task["task_id"]}, timeout=10)
    schemas.check("SubscribeAck", ack)
    schemas.check("UnsubscribeAck", listener.client.call("unsubscribe", task, timeout=10))
    refused = listener.client.call("stop", {"task_id": task["task_id"]}, timeout=10)
    assert refused["error"] == "task_finished"
    schemas.check("ErrorAck", refused)
    waveform = requests.get(f"{server.url}/tasks/{task['task_id']}/waveform.json", timeout=10)
    schemas.check("Waveform", waveform.json())
    deleted = requests.delete(f"{server.url}/tasks/{task['task_id']}", timeout=10)
    schemas.check("Deleted", deleted.json())


def test_chunks_without_audio_keep_to_their_schema(server, schemas, listener, wav):
    task = upload(server, wav, sid=listener.sid, pipeline="", stream_audio="false")
    listener.wait_end(task["task_id"])
    chunks = listener.chunks(task["task_id"])
    assert chunks and all("audio" not in chunk for chunk in chunks)
    for chunk in chunks:
        schemas.check("AudioChunkEvent", chunk)


def test_a_stopped_task_keeps_to_its_schemas(server, schemas, listener, wav):
    task = upload(server, wav, sid=listener.sid, pipeline="test_count")
    Count.wait_for(1)
    ack = listener.client.call("stop", {"task_id": task["task_id"]}, timeout=10)
    schemas.check("StopAck", ack)
    name, data = listener.wait_end(task["task_id"])
    assert name == "processing_stopped"
    schemas.check("ProcessingStoppedEvent", data)
    again = requests.post(f"{server.url}/stop-processing", json={"task_id": task["task_id"]})
    schemas.check("Stopped", again.json())


def test_a_failed_task_keeps_to_its_schemas(server, schemas, listener, wav):
    task = upload(server, wav, sid=listener.sid, pipeline="test_explode=at=50000")
    name, data = listener.wait_end(task["task_id"])
    assert name == "processing_error"
    schemas.check("ProcessingErrorEvent", data)
    failed = requests.get(f"{server.url}/tasks/{task['task_id']}", timeout=10).json()
    assert failed["error"]["error"] == "processing_failed"
    schemas.check("Task", failed)
    conflict = requests.get(f"{server.url}/tasks/{task['task_id']}/result", timeout=10)
    assert conflict.status_code == 409
    schemas.check("Error", conflict.json())


def test_the_service_answers_keep_to_their_schemas(server, schemas):
    schemas.check("Health", requests.get(f"{server.url}/healthz", timeout=10).json())
    schemas.check("StepCatalogue", requests.get(f"{server.url}/pipeline/steps", timeout=10).json())
    bad = requests.post(f"{server.url}/upload", data={"pipeline": "highpass=freq=nope"})
    assert bad.status_code == 400
    schemas.check("Error", bad.json())


def keys(model: Any) -> set[str]:
    return set(typing.get_type_hints(model))


def test_the_task_json_has_exactly_the_models_keys(server, wav):
    task = upload(server, wav, pipeline="")
    described = server.engine.describe(server.engine.get(task["task_id"]))
    assert set(described) == keys(TaskJson)
    assert TaskJson.__required_keys__ == keys(TaskJson), "to_json always gives every key"
    assert set(described["input"]) == keys(InputInfo)
    assert set(described["links"]) == keys(TaskLinks)


def test_every_model_is_published_and_every_event_has_one():
    published = set(COMPONENTS)
    assert set(EVENTS.values()) <= published
    assert {"Task", "Error", "ErrorAck", "SubscribeAck", "UnsubscribeAck", "StopAck"} <= published
