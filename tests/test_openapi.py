"""GET /openapi.json: a valid OpenAPI document of every route, and a server that keeps to it."""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from helpers import Count, music, write_wav
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from audioserver.audio.steps import catalogue

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# What "keeps to the document" means for an answer: a documented status, media type, headers
# and body schema. (Each call below also names the exact status it expects.)
CONFORMANCE = [
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


def served_routes(app) -> set[tuple[str, str]]:
    """Every (method, path) the app answers, in OpenAPI's path syntax (HEAD and OPTIONS aside)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {(method.lower(), path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_the_document_is_valid_openapi_3(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    validate(document)


def test_the_document_lists_every_route_of_the_app(app, client):
    documented = documented_routes(client.get("/openapi.json").get_json())
    served = served_routes(app)
    assert served - documented == set(), "routes without documentation"
    assert documented - served == set(), "documented routes the app does not serve"


def test_step_names_and_formats_come_from_the_code(client):
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    names = [step.name for step in catalogue()]
    assert schemas["PipelineStep"]["properties"]["step"]["enum"] == names
    formats = client.get("/pipeline/steps").get_json()["formats"]
    assert schemas["Upload"]["properties"]["format"]["enum"] == list(formats)


# -- schemathesis against a live server ------------------------------------------------------


@pytest.fixture
def served_schema(live_server, request):
    """The live server's own /openapi.json."""
    # schemathesis 4.32's lazy schemas read Function._nodeid, which pytest 9.2 no longer has.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    return schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")


served = schemathesis.pytest.from_fixture("served_schema")


@served.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_every_answer_keeps_to_the_document(case):
    # Valid-looking uploads are still refused when the bytes are not audio (415) or the
    # pipeline text does not parse (400): the schema cannot say "decodable audio".
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])


class Api:
    """Calls operations of the served document with chosen data, checking each answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema = schemathesis.openapi.from_url(f"{url}/openapi.json")

    def __call__(self, method: str, path: str, *, status: int, **data: Any):
        case = self.schema[path][method].Case(**data)
        response = case.call(base_url=self.url)
        case.validate_response(response, checks=CONFORMANCE)
        assert response.status_code == status, response.text[:500]
        return response


def upload_body(wav: bytes, **fields: Any) -> dict[str, Any]:
    return {"body": {"file": wav, **fields}, "media_type": "multipart/form-data"}


@pytest.fixture
def wav_bytes(tmp_path) -> bytes:
    return write_wav(tmp_path / "song.wav", music(2.5), 44100).read_bytes()


def test_a_task_from_upload_to_delete_keeps_to_the_document(live_server, wav_bytes):
    api = Api(live_server.url)
    task = api("POST", "/upload", status=202, **upload_body(wav_bytes, pipeline="gain=db=-6"))
    task_id = task.json()["task_id"]
    ids = {"path_parameters": {"task_id": task_id}}
    api("GET", "/tasks/{task_id}", status=200, **ids)
    assert live_server.engine.get(task_id).retired.wait(60)
    api("GET", "/tasks/{task_id}", status=200, **ids)
    assert api("GET", "/tasks/{task_id}/result", status=200, **ids).content[:4] == b"RIFF"
    part = api("GET", "/tasks/{task_id}/result", status=206, headers={"Range": "bytes=0-99"}, **ids)
    assert len(part.content) == 100
    api("GET", "/tasks/{task_id}/waveform.json", status=200, **ids)
    api("POST", "/stop-processing", status=409, body={"task_id": task_id})
    api("DELETE", "/tasks/{task_id}", status=200, **ids)
    api("GET", "/tasks/{task_id}", status=404, **ids)
    api("GET", "/tasks/{task_id}/result", status=404, **ids)


def test_conflicts_and_capacity_keep_to_the_document(make_server, wav_bytes, test_steps):
    server = make_server(WORKERS=1, MAX_ACTIVE_TASKS=1, MAX_QUEUED_TASKS=0)
    api = Api(server.url)
    running = api("POST", "/upload", status=202, **upload_body(wav_bytes, pipeline="test_count"))
    ids = {"path_parameters": {"task_id": running.json()["task_id"]}}
    api("GET", "/tasks/{task_id}/result", status=409, **ids)
    api("GET", "/tasks/{task_id}/waveform.json", status=409, **ids)
    refused = api("POST", "/upload", status=503, **upload_body(wav_bytes))
    assert int(refused.headers["retry-after"][0]) > 0
    api("POST", "/stop-processing", status=200, body=ids["path_parameters"])
    Count.gate.set()
    assert server.engine.get(ids["path_parameters"]["task_id"]).retired.wait(30)
    api("POST", "/upload", status=415, **upload_body(b"not audio at all"))
    api("POST", "/upload", status=400, **upload_body(wav_bytes, pipeline="nope"))
