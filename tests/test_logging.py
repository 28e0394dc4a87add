"""Logs: one line per task event, none per chunk; no WARNING or ERROR in a normal session."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import requests
from helpers import Count, Listener, ServerProcess, music, write_wav

from audioserver.server import LOG_FORMAT, TaskIdFilter


def upload(client, path: Path, **fields) -> str:
    data = {"file": (open(path, "rb"), path.name), **fields}  # noqa: SIM115
    return client.post("/upload", data=data, content_type="multipart/form-data").get_json()[
        "task_id"
    ]


def task_lines(caplog, task_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "task_id", None) == task_id]


def test_a_task_logs_its_events_not_its_chunks(app, client, tmp_path, caplog, test_steps):
    caplog.set_level(logging.INFO, logger="audioserver")
    engine = app.extensions["audio_engine"]
    wav = write_wav(tmp_path / "a.wav", music(2.5), 44100)
    done = upload(client, wav, pipeline="highpass=freq=80,normalize", chunk_seconds="0.25")
    assert engine.get(done).retired.wait(60)
    lines = task_lines(caplog, done)
    assert [line.split(" ", 1)[0].rstrip(":") for line in lines] == [
        "accepted", "started", "stage", "completed",
    ]  # fmt: skip
    assert "'a.wav'" in lines[0] and "pcm_s16le, 44100 Hz, 2 ch" in lines[0]
    assert "10 chunks" in lines[-1] and "realtime" in lines[-1]  # 10 chunks, one line

    stopped = upload(client, wav, pipeline="test_count")
    engine.stop(stopped)
    Count.gate.set()
    assert engine.get(stopped).retired.wait(60)
    assert task_lines(caplog, stopped)[-1].startswith("stopped (requested)")

    failed = upload(client, wav, pipeline="test_explode=at=0")
    assert engine.get(failed).retired.wait(60)
    assert any(line.startswith("failed: ") for line in task_lines(caplog, failed))


def test_console_lines_carry_time_level_thread_and_task():
    record = logging.LogRecord("audioserver.tasks", logging.INFO, __file__, 1, "started", (), None)
    record.task_id = "abc123"
    record.threadName = "task-abc123"
    line = logging.Formatter(LOG_FORMAT).format(record)
    assert line.split(" ", 2)[2].startswith("INFO    [task-abc123] [task abc123] audioserver")
    plain = logging.LogRecord("werkzeug", logging.WARNING, __file__, 1, "hello", (), None)
    TaskIdFilter().filter(plain)
    assert "[task -]" in logging.Formatter(LOG_FORMAT).format(plain)


# -- a real server process: a normal session logs nothing alarming, a real fault does -----------


def open_sockets(pid: int) -> int:
    """How many sockets a process has open (Linux)."""
    folder = Path(f"/proc/{pid}/fd")
    return sum(os.readlink(fd).startswith("socket:") for fd in folder.iterdir() if fd.exists())


def wait_for_sockets(pid: int, count: int, *, timeout: float = 10.0) -> None:
    """Wait until the process has closed every socket but count (its connections are done)."""
    deadline = time.monotonic() + timeout
    while open_sockets(pid) > count:
        assert time.monotonic() < deadline, f"{open_sockets(pid)} sockets still open"
        time.sleep(0.02)  # /proc gives no signal when a socket closes


def loud_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]


def test_a_normal_session_of_python_app_py_logs_no_warning_or_error(tmp_path, audio_file):
    log = tmp_path / "server.log"
    with ServerProcess(log=log, log_level="INFO", workers=2) as server:
        idle = open_sockets(server.process.pid)  # the listening socket
        page = requests.get(f"{server.url}/", timeout=10)
        for script in re.findall(r'<script src="([^"]+)"', page.text):
            assert requests.get(f"{server.url}{script}", timeout=10).ok
        browser = Listener(server.url, transports=("polling", "websocket"))  # upgrades
        script = Listener(server.url)
        with open(audio_file(3.0, "mp3"), "rb") as file:
            done = requests.post(
                f"{server.url}/upload", files={"file": file}, data={"sid": browser.sid},
                timeout=30,
            ).json()["task_id"]  # fmt: skip
        with open(audio_file(60.0, "flac"), "rb") as file:
            stopped = requests.post(
                f"{server.url}/upload", files={"file": file},
                data={"sid": script.sid, "chunk_seconds": "0.25"}, timeout=30,
            ).json()["task_id"]  # fmt: skip
        assert browser.wait_end(done)[0] == "processing_complete"
        assert script.client.call("stop", {"task_id": stopped}, timeout=10)["ok"]
        assert script.wait_end(stopped)[0] == "processing_stopped"
        assert requests.get(f"{server.url}/tasks/{done}/result", timeout=30).ok
        browser.close()
        script.close()
        wait_for_sockets(server.process.pid, idle)  # the server is done with every connection
        text = log.read_text()
    assert "serving on http://127.0.0.1" in text and "Werkzeug's threaded server" in text
    assert text.count("disconnected") == 2 and f"[task {stopped}]" in text
    assert loud_lines(text) == []


def test_a_real_fault_still_logs_loudly(tmp_path, audio_file):
    data = tmp_path / "data"
    log = tmp_path / "server.log"
    with ServerProcess(data, log=log, log_level="INFO", workers=2) as server:
        uploads = data / "uploads"
        uploads.rmdir()
        uploads.write_text("a file where the server keeps its uploads folder")
        with open(audio_file(1.0), "rb") as file:
            response = requests.post(f"{server.url}/upload", files={"file": file}, timeout=30)
        text = log.read_text()
    assert response.status_code >= 500 and response.json()["error"]
    assert [line for line in loud_lines(text) if " ERROR " in line]
    assert "Traceback" in text  # where it failed, for whoever fixes it
