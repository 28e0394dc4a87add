"""The client's parts without a server: paths, tables, text, the WAV it grows, resubscribing."""

from __future__ import annotations

import io
import re
import wave
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from helpers import to_int16

from audioclient import cli
from audioclient.api import ClientError, ServerError, filename_of
from audioclient.connection import Connection
from audioclient.job import Job, ProcessOptions, completed_report
from audioclient.progress import ProgressBar
from audioserver.audio.pipeline import Pipeline


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    for command in ("process", "status", "stop", "result", "steps"):
        assert command in usage


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (None, nullcontext("wav")),
        ("song.flac", nullcontext("flac")),
        ("Song.MP3", nullcontext("mp3")),
        ("out/", nullcontext("wav")),
        ("song.m4a", pytest.raises(ClientError, match="use --format")),
    ],
)
def test_the_format_comes_from_the_output_name(output, expected):
    with expected as fmt:
        assert cli.format_of(output) == fmt


def test_the_output_of_several_files_is_a_folder_whatever_its_name():
    assert cli.format_of("outdir", several=True) == "wav"
    assert cli.format_of("outdir.flac", several=True) == "wav"


def test_outputs_go_beside_the_inputs_or_into_a_folder(tmp_path):
    inputs = [tmp_path / "a.mp3", tmp_path / "sub" / "b.flac"]
    assert cli.output_paths(inputs[:1], None, "ogg") == [tmp_path / "a_processed.ogg"]
    assert cli.output_paths(inputs[:1], str(tmp_path / "x.wav"), "wav") == [tmp_path / "x.wav"]
    folder = tmp_path / "made"
    assert cli.output_paths(inputs, str(folder), "wav") == [
        folder / "a_processed.wav",
        folder / "b_processed.wav",
    ]
    assert folder.is_dir()
    with pytest.raises(ClientError, match="collide"):
        cli.output_paths([tmp_path / "a.mp3", tmp_path / "a.wav"], str(folder), "wav")


def test_upload_fields_stream_audio_only_for_wav():
    wav = ProcessOptions(pipeline="", chunk_seconds=0.5).upload_fields(sid="s1")
    assert wav == {
        "sid": "s1",
        "format": "wav",
        "stream_audio": "True",
        "pipeline": "",
        "chunk_seconds": "0.5",
    }
    flac = ProcessOptions(format="flac").upload_fields(sid="s1")
    assert flac == {"sid": "s1", "format": "flac", "stream_audio": "False"}


def test_the_steps_table_shows_the_servers_catalogue(client):
    catalogue = client.get("/pipeline/steps").get_json()
    table = cli.steps_table(catalogue)
    lines = table.splitlines()
    assert lines[0].split() == ["STEP", "KIND", "PARAMETER", "DEFAULT", "RANGE", "EXAMPLE"]
    for step in catalogue["steps"]:
        assert re.search(rf"^{step['name']}\s+{step['kind']}\s", table, re.M)
        assert step["example"] in table
    assert re.search(r"^loudness\s+global\s+target\s+-14\s+-70 \.\. -5 LUFS\s", table, re.M)
    assert re.search(r"^mono\s+per sample\s+-\s+mono$", table, re.M)


@pytest.mark.parametrize(
    "text",
    ["highpass=freq=80:order=4,normalize", "", "loudness=target=-16:max_peak=-1,mono", "gain=1.5"],
)
def test_pipeline_text_reads_back_as_the_same_pipeline(text):
    pipeline = Pipeline.parse(text).to_json()
    assert Pipeline.parse(cli.pipeline_text(pipeline)).to_json() == pipeline


def test_reports_show_the_loudness_or_say_it_does_not_exist():
    end = {
        "duration": 30.0,
        "elapsed": 0.5,
        "realtime_factor": 60.0,
        "summary": {"integrated_lufs": -14.04, "true_peak_db": -1.0, "loudness_range_lu": None},
    }
    assert completed_report("a.mp3", Path("a.wav"), end) == (
        "a.mp3 -> a.wav: 30.0 s of audio in 0.50 s (60.0x realtime); "
        "-14.0 LUFS, true peak -1.0 dBTP, LRA n/a"
    )


def test_the_progress_bar_shows_percent_realtime_factor_chunks_and_eta():
    screen = io.StringIO()
    bar = ProgressBar("song.mp3", enabled=True, file=screen)
    bar.show(fraction=0.25, realtime_factor=42.0, chunks=3, chunks_total=15)
    bar.show(fraction=0.5, realtime_factor=40.5, chunks=7, chunks_total=15)
    bar.close()
    last = screen.getvalue().split("\r")[-1]
    assert re.match(r"song\.mp3  50%\|.*\| ETA [0-9:?]+, 40\.5x realtime, 7/15 chunks", last)


def test_the_bar_shows_the_upload_then_the_processing_from_zero():
    screen = io.StringIO()
    bar = ProgressBar("big.wav", enabled=True, file=screen)
    mb = 1024 * 1024
    for sent in range(0, 301 * mb, mb):  # one call a block: drawn at most ten times a second
        bar.uploading(min(sent, 300 * mb), 300 * mb)
    drawn = screen.getvalue().split("\r")
    assert re.match(r"big\.wav 100%\|.*\| ETA [0-9:?]+, uploading 300\.0/300\.0 MB", drawn[-1])
    assert len(drawn) < 30
    bar.show(fraction=0.1, realtime_factor=None, chunks=1, chunks_total=10)
    bar.close()
    last = screen.getvalue().split("\r")[-1]
    assert re.match(r"big\.wav  10%\|.*\| ETA [0-9:?]+, 1/10 chunks", last)
    assert "uploading" not in last


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="song_processed.wav"', "song_processed.wav"),
        (
            'attachment; filename="cafe_processed.flac"; '
            "filename*=UTF-8''caf%C3%A9_processed.flac",
            "café_processed.flac",
        ),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ("inline", None),
    ],
)
def test_the_result_name_comes_from_content_disposition(header, name):
    assert filename_of(header) == name


def test_server_errors_read_as_the_servers_message():
    error = ServerError(400, {"error": "invalid_pipeline", "message": "unknown step 'x'."})
    assert str(error) == "unknown step 'x'. (400 invalid_pipeline)"
    assert ServerError(503, {"retry_after": "7"}).retry_after == 7.0


# -- a job's output, chunk by chunk ---------------------------------------------------------


@pytest.fixture
def make_job(tmp_path: Path) -> Iterator[Callable[..., Job]]:
    """Jobs for chunks only: no server, no connection, no bar; their output closed after."""
    jobs = []

    def make(fmt: str = "wav") -> Job:
        jobs.append(
            Job(
                tmp_path / "in.wav",
                tmp_path / "out.wav",
                options=ProcessOptions(format=fmt),
                server=None,
                connection=None,
                bar=None,
            )
        )
        return jobs[-1]

    yield make
    for job in jobs:
        job.close_output(create_empty=False)


def chunk(index: int, frames: int = 441, channels: int = 2) -> dict:
    samples = np.full((frames, channels), (index + 1) / 100)
    return {
        "index": index,
        "chunks_total": 4,
        "sample_rate": 44100,
        "channels": channels,
        "audio": to_int16(samples).tobytes(),
    }


def read_frames(path: Path) -> bytes:
    with wave.open(str(path)) as wav:
        return wav.readframes(wav.getnframes())


def test_the_wav_is_valid_after_every_chunk_and_duplicates_are_ignored(make_job):
    job = make_job()
    sent = [chunk(i) for i in range(3)]
    for index in (0, 1, 0, 1, 2):  # a replay after a reconnect repeats what arrived
        assert job.on_chunk(sent[index]) is True
        assert read_frames(job.output) == b"".join(c["audio"] for c in sent[: job.next_index])
    assert job.next_index == 3


def test_a_gap_is_refused_so_that_the_connection_asks_again(make_job):
    job = make_job()
    assert job.on_chunk(chunk(0)) is True
    assert job.on_chunk(chunk(2)) is False
    assert job.on_chunk(chunk(3)) is True  # asked once; the replay is on its way
    assert job.next_index == 1
    assert job.on_chunk(chunk(1)) is True and job.next_index == 2


def test_other_formats_count_chunks_without_writing(make_job):
    job = make_job("flac")
    assert job.on_chunk({"index": 0, "chunks_total": 2}) is True
    assert job.next_index == 1 and not job.output.exists()


# -- the connection: events before the task is known, and resubscribing ----------------------


class Recorded:
    """A subscriber that records what it is given."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.name = task_id
        self.events: list[tuple[str, int | None]] = []

    @property
    def next_index(self) -> int:
        return sum(1 for name, _ in self.events if name == "audio_chunk")

    def on_chunk(self, chunk: dict) -> bool:
        self.events.append(("audio_chunk", chunk["index"]))
        return True

    def on_end(self, event: str, data: dict) -> None:
        self.events.append((event, None))

    def on_refused(self, ack: dict) -> None:
        self.events.append(("refused", None))


@pytest.fixture
def connection(monkeypatch) -> Connection:
    """A Connection that is never opened; what it emits is recorded in .emitted."""
    connection = Connection("http://127.0.0.1:1")
    connection.emitted = []
    monkeypatch.setattr(
        connection.client, "emit", lambda event, data, callback: connection.emitted.append(data)
    )
    monkeypatch.setattr(connection.client, "get_sid", lambda: "sid-2")
    return connection


def test_events_that_come_before_the_upload_answer_are_kept_for_the_task(connection):
    connection._on_chunk({"task_id": "t1", "index": 0})
    connection._on_end("processing_complete", {"task_id": "t1"})
    subscriber = Recorded("t1")
    connection.watch(subscriber, subscribed_as=None)
    assert subscriber.events == [("audio_chunk", 0), ("processing_complete", None)]
    assert connection.emitted == []  # not connected: nothing to subscribe


def test_a_reconnect_subscribes_each_task_from_the_next_chunk_it_needs(connection):
    connection._on_connect()  # sid-2
    first, second = Recorded("t1"), Recorded("t2")
    connection.watch(first, subscribed_as="sid-2")  # subscribed by the upload itself
    connection.watch(second, subscribed_as="sid-1")  # uploaded before a reconnect
    assert connection.emitted == [{"task_id": "t2", "from_index": 0}]
    connection._on_chunk({"task_id": "t1", "index": 0})
    connection._on_chunk({"task_id": "t1", "index": 1})
    connection._on_disconnect("transport error")
    assert connection.seconds_disconnected() > 0 and connection.drops == 1
    connection._on_connect()
    assert connection.emitted[1:] == [
        {"task_id": "t1", "from_index": 2},
        {"task_id": "t2", "from_index": 0},
    ]


def test_a_refused_subscription_ends_the_task(connection):
    subscriber = Recorded("t1")
    connection.watch(subscriber, subscribed_as=None)
    connection._on_ack(subscriber, {"ok": False, "error": "task_not_found", "message": "gone"})
    assert subscriber.events == [("refused", None)]
    connection._on_chunk({"task_id": "t1", "index": 0})  # no longer delivered
    assert subscriber.events == [("refused", None)]
