"""Logs: one line per task event (accepted, started, completed/stopped/failed), none per chunk."""

from __future__ import annotations

import logging
from pathlib import Path

from helpers import Count, music, write_wav

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
