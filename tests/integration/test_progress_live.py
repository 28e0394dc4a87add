"""processing_progress on a live server: a real python-socketio client over WebSocket, and
audio-client, which draws its bar from it instead of asking GET /tasks/<id>."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests
from helpers import Listener, music, write_wav

from audioclient import cli
from audioserver.tasks import PROGRESS_SECONDS

# Slow enough that the throttle matters, even on a quiet machine: a first pass of a
# resampler and 8th-order filters at 96 kHz over 60 s of audio, on one worker.
PIPELINE = (
    "resample=rate=96000,highpass=freq=10:order=8,lowpass=freq=12000:order=8,loudness=target=-16"
)


@pytest.fixture(scope="module")
def minute_of_music(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("progress") / "minute.wav", music(60.0, rate=48000),
                     48000)  # fmt: skip


def follow_progress(listener: Listener) -> None:
    """Record processing_progress too (Listener records the contract's other task events)."""
    listener.client.on("processing_progress", listener._recorder("processing_progress"))


def upload(server, path, **fields: str) -> dict[str, Any]:
    with open(path, "rb") as file:
        response = requests.post(
            f"{server.url}/upload", files={"file": (path.name, file)}, data=fields, timeout=60
        )
    assert response.status_code == 202, response.text
    return response.json()


def test_progress_reaches_a_socketio_client_in_order_and_a_few_times_a_second(
    make_server, listen, minute_of_music
):
    server = make_server(WORKERS=1)
    listener = listen(server.url)
    follow_progress(listener)
    task = upload(
        server, minute_of_music, pipeline=PIPELINE, chunk_seconds="0.25", sid=listener.sid
    )
    event, end = listener.wait_end(task["task_id"], timeout=180)
    assert event == "processing_complete"

    events = listener.of_task(task["task_id"])
    names = [name for name, _ in events]
    progress = [data for name, data in events if name == "processing_progress"]
    # The first pass (measuring loudness) sends no chunk, but progress, from its first seconds.
    first_pass = progress[: [p["stage"] for p in progress].index(1)]
    assert names.index("processing_progress") < names.index("audio_chunk")
    assert len(first_pass) >= 3 and first_pass[-1]["chunks_done"] == 240
    assert first_pass[-1]["progress"] == 0.5 and first_pass[-1]["chunks_emitted"] == 0
    # In order, and nothing after the end.
    assert names[-1] == "processing_complete" and names.count("processing_complete") == 1
    keys = [(p["stage"], p["chunks_done"]) for p in progress]
    assert keys == sorted(keys)
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    assert progress[-1]["progress"] == 1.0 and progress[-1]["chunks_emitted"] == end["chunks"]
    for position, (name, data) in enumerate(events):
        if name == "processing_progress":
            assert data["chunks_emitted"] == names[:position].count("audio_chunk")
    # The rate, by the server's own clock: throttled events are PROGRESS_SECONDS apart at
    # least (elapsed is to the millisecond); only a stage's end may come sooner.
    ends = [p for p in progress if p["chunks_done"] == p["chunks_total"]]
    throttled = [p for p in progress if p not in ends]
    gaps = [b["elapsed"] - a["elapsed"] for a, b in itertools.pairwise(throttled)]
    assert gaps and min(gaps) >= PROGRESS_SECONDS - 0.002
    assert len(progress) <= end["elapsed"] / PROGRESS_SECONDS + 1 + 2
    assert end["elapsed"] > 1.0 and len(throttled) >= end["elapsed"] - 1


class RequestLog:
    """WSGI middleware that notes the method and path of every request the app gets."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        with self._lock:
            self.requests.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
        return self.app(environ, start_response)


def test_audio_client_draws_the_first_pass_from_the_event_without_polling(
    make_server, minute_of_music, tmp_path, capsys
):
    server = make_server(WORKERS=1)
    log = RequestLog(server.app.wsgi_app)
    server.app.wsgi_app = log
    output = tmp_path / "out.wav"
    status = cli.main(
        ["process", str(minute_of_music), "--pipeline", PIPELINE, "--chunk-seconds", "0.25",
         "-o", str(output), "--progress", "--server", server.url]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 0, err
    # The bar moved during the first pass, before any chunk had arrived...
    first_pass = [int(p) for p in re.findall(r"(\d+)%\|[^|]*\|[^\r\n]*, 0/240 chunks", err)]
    assert any(0 < percent < 50 for percent in first_pass), err
    # ...from processing_progress alone: the client never asked for the task.
    assert "POST /upload" in log.requests
    assert not [r for r in log.requests if r.startswith("GET /tasks/")], log.requests
