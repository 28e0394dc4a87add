"""``audio-server process``: the engine in one process, against the server's own results.

The commands run as users run them (``python app.py process`` and the
installed ``audio-server process``, each in a process of its own); the
reference is what a live server's ``GET /tasks/<id>/result`` gives for the
same file, pipeline, chunk length and format.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import requests
from helpers import ROOT

from audioserver import local

APP = [sys.executable, str(ROOT / "app.py")]
AUDIO_SERVER = [str(Path(sys.executable).with_name("audio-server"))]
PIPELINE = "highpass=freq=80,loudness=target=-14"  # two stages: the global step's two passes
SLOW_PIPELINE = "highpass=freq=10:order=8,lowpass=freq=12000:order=8,gain=db=-1"


def run_process(
    *arguments: object, command: list[str] = APP, cwd: Path
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command, "process", *(str(argument) for argument in arguments)],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )  # fmt: skip


def server_result(server, listener, path: Path, **fields: str) -> bytes:
    """Upload to the live server, wait for the end, return GET /tasks/<id>/result's bytes."""
    with open(path, "rb") as file:
        task = requests.post(
            f"{server.url}/upload", files={"file": (path.name, file)},
            data={"sid": listener.sid, **fields}, timeout=30,
        ).json()  # fmt: skip
    event, end = listener.wait_end(task["task_id"])
    assert event == "processing_complete", end
    response = requests.get(f"{server.url}{end['result_url']}", timeout=60)
    assert response.status_code == 200
    return response.content


@pytest.mark.parametrize(
    ("fmt", "command"),
    [("wav", APP), ("flac", AUDIO_SERVER), ("mp3", APP), ("ogg", AUDIO_SERVER), ("opus", APP)],
)
def test_the_result_is_the_servers_byte_for_byte(
    live_server, listen, audio_file, tmp_path, fmt, command
):
    path = audio_file(6.0, "mp3")
    expected = server_result(
        live_server, listen(live_server.url), path,
        pipeline=PIPELINE, chunk_seconds="0.5", format=fmt,
    )  # fmt: skip
    folder = tmp_path / "local"
    folder.mkdir()
    output = folder / f"local.{fmt}"
    done = run_process(
        path, "--pipeline", PIPELINE, "--chunk-seconds", "0.5", "-o", output,
        command=command, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert output.read_bytes() == expected
    assert done.stderr == ""  # no bar off a terminal, and nothing logged
    summary = re.fullmatch(
        rf"{path.name} -> {re.escape(str(output))}: 6\.0 s of audio in \d+\.\d\d s "
        r"\(\d+\.\dx realtime\); -14\.0 LUFS, true peak -?\d+\.\d dBTP, LRA \d+\.\d LU\n",
        done.stdout,
    )
    assert summary, done.stdout
    assert [item.name for item in folder.iterdir()] == [f"local.{fmt}"]  # no scratch left


def test_several_files_at_once_each_as_the_server_makes_it(
    live_server, listen, audio_file, tmp_path
):
    """Files of other rates and channel counts share the pool; each gets its own pipeline."""
    listener = listen(live_server.url)
    paths = [
        audio_file(5.0, "mp3"),
        audio_file(3.0, "flac", rate=48000, channels=1),
        audio_file(4.0, "wav", rate=22050),
    ]
    fields = {"pipeline": PIPELINE, "chunk_seconds": "0.5"}
    expected = {path.name: server_result(live_server, listener, path, **fields) for path in paths}
    folder = tmp_path / "out"
    done = run_process(
        *paths, "--pipeline", PIPELINE, "--chunk-seconds", "0.5", "-o", f"{folder}/",
        "--progress", "--workers", "2", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for path in paths:
        assert (folder / f"{path.stem}_processed.wav").read_bytes() == expected[path.name]
        assert re.search(rf"^{re.escape(path.name)} -> .* -14\.0 LUFS", done.stdout, re.M)
    last_bars = done.stderr.split("\x1b[3F")[-1].splitlines()  # the last drawing: a line a file
    assert len(last_bars) == 3
    for path, bar in zip(paths, last_bars, strict=True):
        assert re.match(
            rf"{re.escape(path.name)} +100%\|█+\| ETA 00:00, \d+\.\dx realtime, (\d+)/\1 chunks",
            bar,
        ), bar
    assert "ERROR" not in done.stderr and "WARNING" not in done.stderr


def test_a_file_that_is_not_audio_is_refused_and_the_others_go_on(audio_file, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 100)
    good = audio_file(2.0, "wav")
    done = run_process(text, good, "-o", tmp_path / "out", "--pipeline", "gain=db=-3", cwd=tmp_path)
    assert done.returncode == 1
    (refused,) = done.stderr.splitlines()
    assert refused.startswith("python app.py process: notes.txt: ") and "(not_audio)" in refused
    assert f"{good.name} -> " in done.stdout
    assert (tmp_path / "out" / f"{good.stem}_processed.wav").exists()
    assert not (tmp_path / "out" / "notes_processed.wav").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--pipeline", "nope"], r"error: Step 1: unknown step 'nope'\. .*\(invalid_pipeline\)$"),
        (["--chunk-seconds", "100"], r"error: chunk_seconds must be .* 0\.25 to 60, got '100'\."),
        (["--pipeline", "highpass=freq=30000"], r"song\.wav: .*'freq'.* \(invalid_pipeline\)$"),
        (["-o", "song.m4a"], r"error: cannot tell the format of 'song\.m4a': use --format"),
        (["missing.mp3"], r"error: missing\.mp3: no such file$"),
        (["-o", "nowhere/song.flac"], r"error: nowhere: no such folder$"),
    ],
)
def test_mistakes_end_with_one_line_and_status_1(audio_file, tmp_path, arguments, message):
    song = audio_file(1.0, "wav", rate=44100).rename(tmp_path / "song.wav")
    done = run_process(song, *arguments, cwd=tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and re.search(message, done.stderr), done.stderr
    assert done.stdout == ""
    assert sorted(item.name for item in tmp_path.iterdir()) == ["song.wav"]


def test_ctrl_c_stops_and_keeps_the_partial_result(audio_file, tmp_path):
    path = audio_file(60.0, "wav", rate=48000)
    output = tmp_path / "partial.wav"
    command = [
        *APP, "process", str(path), "-o", str(output), "--chunk-seconds", "0.25",
        "--pipeline", SLOW_PIPELINE, "--progress", "--workers", "1",
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    ) as process:
        try:
            seen = b""
            while not re.search(rb"\b([4-9]|\d\d+)/240 chunks", seen):  # the bar's own count
                block = process.stderr.read1(1 << 16)
                assert block, seen.decode(errors="replace")
                seen += block
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            process.kill()
    err = err.decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    stopped = re.search(
        r"stopped after (\d+) of 240 chunks; partial output kept in (.*)$", err, re.M
    )
    assert stopped and stopped[2] == str(output), err
    with wave.open(str(output)) as result:
        assert result.getnframes() == int(stopped[1]) * 12000 and int(stopped[1]) >= 4
    assert out == b""


def test_both_entry_points_list_the_command(tmp_path):
    for command in (APP, AUDIO_SERVER):
        server_help = subprocess.run([*command, "--help"], capture_output=True, text=True)
        assert server_help.returncode == 0, server_help.stderr
        assert re.search(r"\sprocess FILE\.\.\.", server_help.stdout)
        process_help = run_process("--help", command=command, cwd=tmp_path)
        assert process_help.returncode == 0, process_help.stderr
        for option in ("--pipeline", "--format", "--output", "--chunk-seconds", "--workers"):
            assert option in process_help.stdout


def test_a_progress_line_shows_percent_eta_speed_and_chunks():
    task = {"status": "processing", "progress": 0.25, "elapsed": 1.0, "duration": 40.0,
            "chunks_done": 5, "chunks_total": 20}  # fmt: skip
    assert local.line("a.mp3", task) == (
        "a.mp3  25%|██████                  | ETA 00:03, 10.0x realtime, 5/20 chunks"
    )
    queued = {**task, "status": "queued", "progress": 0.0, "elapsed": 0.0, "chunks_done": 0}
    assert local.line("a.mp3", queued) == (
        "a.mp3   0%|                        | ETA ?, 0/20 chunks, queued"
    )
    assert local.line("b.mp3", None) == "b.mp3 refused"
