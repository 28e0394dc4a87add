"""The command-line client and the example scripts against a live server.

Network drops are real: a TCP proxy between the client and the server closes
every connection in the middle of the stream (or of the upload, or of a
download), and the client must reconnect through it and end with the same
file as without drops.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from helpers import free_port, wav_pcm

from audioclient import cli
from audioclient.api import Server

ROOT = Path(__file__).resolve().parents[2]
SLOW_PIPELINE = "highpass=freq=10:order=8,lowpass=freq=12000:order=8,gain=db=-1"


class CuttingProxy:
    """A TCP proxy that closes every open connection when the bytes it carried pass a mark.

    ``cut_down_at`` counts bytes from the server to clients, ``cut_up_at``
    from clients to the server (over all connections); each mark cuts once.
    New connections (the client's reconnects) go through as before.
    """

    def __init__(
        self, target: str, *, cut_down_at: Sequence[int] = (), cut_up_at: Sequence[int] = ()
    ) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname, parts.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._carried = {"down": 0, "up": 0}
        self._marks = {"down": sorted(cut_down_at), "up": sorted(cut_up_at)}
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self._target)
            with self._lock:
                self._open |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                self._carry(direction, len(data))
        except OSError:
            pass
        for end in (source, sink):
            self._close(end)

    def _carry(self, direction: str, count: int) -> None:
        with self._lock:
            self._carried[direction] += count
            marks = self._marks[direction]
            if not marks or self._carried[direction] < marks[0]:
                return
            marks.pop(0)
            self.cuts += 1
            doomed = list(self._open)
        for end in doomed:
            self._close(end, reset=True)

    def _close(self, end: socket.socket, *, reset: bool = False) -> None:
        with self._lock:
            self._open.discard(end)
        try:
            if reset:  # an abrupt drop: RST, not a polite FIN
                end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        end.close()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            doomed = list(self._open)
        for end in doomed:
            self._close(end)


@pytest.fixture
def proxy(live_server) -> Iterator:
    proxies = []

    def make(**marks) -> CuttingProxy:
        proxies.append(CuttingProxy(live_server.url, **marks))
        return proxies[-1]

    yield make
    for each in proxies:
        each.close()


def run_client(*args: str) -> int:
    return cli.main([str(arg) for arg in args])


def task_ids(stdout: str) -> dict[str, str]:
    """File name -> task id, from the lines the client prints after each upload."""
    return dict(re.findall(r"^(\S+): task ([0-9a-f]{32}) ", stdout, re.M))


def result_bytes(server_url: str, task_id: str) -> bytes:
    response = requests.get(f"{server_url}/tasks/{task_id}/result", timeout=60)
    assert response.status_code == 200
    return response.content


# -- process -------------------------------------------------------------------------------


def test_process_writes_the_streamed_wav_identical_to_the_result_and_prints_the_summary(
    live_server, audio_file, tmp_path, capsys
):
    path = audio_file(5.0, "mp3")
    output = tmp_path / "out.wav"
    status = run_client(
        "process", path, "--pipeline", "highpass=freq=80,loudness=target=-14",
        "-o", output, "--server", live_server.url,
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0, err
    (task_id,) = task_ids(out).values()
    assert output.read_bytes() == result_bytes(live_server.url, task_id)
    summary = re.search(
        r"-> .*out\.wav: 5\.0 s of audio in .* s \((.*)x realtime\); (.*)$", out, re.M
    )
    assert summary, out
    assert re.fullmatch(r"-14\.0 LUFS, true peak -?\d+\.\d dBTP, LRA \d+\.\d LU", summary[2])


def test_other_formats_are_downloaded_when_the_task_ends(live_server, audio_file, tmp_path, capsys):
    path = audio_file(3.0, "wav")
    output = tmp_path / "song.flac"  # the format comes from the name
    assert run_client("process", path, "-o", output, "--server", live_server.url) == 0
    (task_id,) = task_ids(capsys.readouterr().out).values()
    assert requests.get(f"{live_server.url}/tasks/{task_id}", timeout=10).json()["format"] == "flac"
    assert output.read_bytes() == result_bytes(live_server.url, task_id)
    assert output.read_bytes()[:4] == b"fLaC"


def test_several_files_at_once_each_with_its_bar(live_server, audio_file, tmp_path, capsys):
    paths = [audio_file(4.0, "mp3"), audio_file(3.0, "ogg"), audio_file(2.0, "flac")]
    folder = tmp_path / "outdir"
    status = run_client(
        "process", *paths, "-o", f"{folder}/", "--chunk-seconds", "0.5", "--progress",
        "--server", live_server.url,
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0, err
    ids = task_ids(out)
    assert set(ids) == {path.name for path in paths}
    for path in paths:
        saved = folder / f"{path.stem}_processed.wav"
        assert saved.read_bytes() == result_bytes(live_server.url, ids[path.name])
        bars = re.findall(
            rf"{re.escape(path.name)}\s+100%\|[^|]*\| ETA [0-9:]+, (.*?)x realtime", err
        )
        assert bars, err  # the finished bar: percent, ETA, realtime factor
    assert err.count("100%|") >= 3


def test_network_drops_mid_stream_leave_the_output_identical(
    live_server, audio_file, proxy, tmp_path, capsys
):
    path = audio_file(20.0, "wav", rate=48000)  # 80 chunks of 48 kB streamed back
    options = ("--chunk-seconds", "0.25", "--pipeline", SLOW_PIPELINE)
    undisturbed = tmp_path / "undisturbed.wav"
    assert (
        run_client("process", path, "-o", undisturbed, *options, "--server", live_server.url) == 0
    )
    capsys.readouterr()

    cutter = proxy(cut_down_at=(1_000_000, 2_500_000))
    resumed = tmp_path / "resumed.wav"
    status = run_client("process", path, "-o", resumed, *options, "--server", cutter.url)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert cutter.cuts == 2
    assert err.count("connection to the server lost") == 2
    assert len(re.findall(r"reconnected: resuming \S+ from chunk [1-9]\d*", err)) == 2, err
    assert resumed.read_bytes() == undisturbed.read_bytes()
    (task_id,) = task_ids(out).values()
    assert resumed.read_bytes() == result_bytes(live_server.url, task_id)


def test_a_drop_during_the_upload_is_retried(live_server, audio_file, proxy, tmp_path, capsys):
    path = audio_file(20.0, "wav", rate=48000)  # 3.8 MB to upload
    cutter = proxy(cut_up_at=(1_000_000,))
    output = tmp_path / "out.wav"
    status = run_client("process", path, "-o", output, "--server", cutter.url)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert cutter.cuts == 1
    assert "upload interrupted" in err and "retrying" in err
    (task_id,) = task_ids(out).values()
    assert output.read_bytes() == result_bytes(live_server.url, task_id)


def test_a_broken_download_resumes_where_it_stopped(
    live_server, listen, audio_file, proxy, tmp_path
):
    watcher = listen(live_server.url)
    path = audio_file(10.0, "wav")
    response = Server(live_server.url).upload(path, fields={"format": "flac", "sid": watcher.sid})
    assert watcher.wait_end(response["task_id"])[0] == "processing_complete"
    expected = result_bytes(live_server.url, response["task_id"])
    cutter = proxy(cut_down_at=(len(expected) // 3,))
    retries = []
    saved = Server(cutter.url).download_result(
        response["task_id"], tmp_path / "song.flac", on_retry=retries.append
    )
    assert cutter.cuts == 1 and len(retries) == 1
    assert saved.read_bytes() == expected


def test_ctrl_c_stops_the_task_and_keeps_the_partial_output(
    live_server, listen, audio_file, tmp_path
):
    path = audio_file(60.0, "wav", rate=48000)
    output = tmp_path / "partial.wav"
    command = [
        sys.executable, "-m", "audioclient", "process", str(path), "-o", str(output),
        "--chunk-seconds", "0.25", "--pipeline", SLOW_PIPELINE, "--server", live_server.url,
    ]  # fmt: skip
    client = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        lines = read_lines(client.stdout)
        task_id = re.search(r"task ([0-9a-f]{32})", lines.get(timeout=60))[1]
        watcher = listen(live_server.url)
        watcher.client.call("subscribe", {"task_id": task_id}, timeout=10)
        watcher.wait_chunk(task_id, 8)
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=60)
    finally:
        client.kill()
    assert client.returncode == 130, err
    assert "Traceback" not in err
    stopped = re.search(
        r"stopped after (\d+) of \d+ chunks; partial output kept in (.*)$", err, re.M
    )
    assert stopped and stopped[2] == str(output), err
    task = requests.get(f"{live_server.url}/tasks/{task_id}", timeout=10).json()
    assert task["status"] == "stopped" and task["chunks_done"] == int(stopped[1]) >= 8
    assert output.read_bytes() == result_bytes(live_server.url, task_id)


def write_noise_wav(path: Path, *, megabytes: int) -> Path:
    """A 48 kHz stereo 16-bit WAV of noise, written a megabyte at a time (never all in memory)."""
    block = os.urandom(1 << 20)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(48000)
        for _ in range(megabytes):
            out.writeframesraw(block)
    return path


# Runs a command and prints its peak RSS. The command's own rusage would not do from the
# test: a child started by fork or vfork starts with its parent's high-water mark (Linux
# keeps it across exec), and the test process holds numpy, scipy and a live server.
PEAK_RSS_WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("peak_rss_kb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(code)
"""


@pytest.mark.slow
def test_a_large_upload_is_streamed_from_the_file_with_its_own_progress_bar(make_server, tmp_path):
    """300 MB go up while the client's peak RSS stays under 100 MB (no body in memory)."""
    server = make_server(MAX_UPLOAD_MB=400)
    path = write_noise_wav(tmp_path / "large.wav", megabytes=300)
    command = [
        sys.executable, "-c", PEAK_RSS_WRAPPER,
        sys.executable, "-m", "audioclient", "process", str(path), "-o", str(tmp_path / "out.flac"),
        "--format", "flac", "--pipeline", "", "--progress", "--server", server.url,
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    ) as client:
        try:
            lines = read_lines(client.stdout)
            accepted = lines.get(timeout=300)  # the task's line: the upload was accepted
            task_id = re.search(r"task ([0-9a-f]{32})", accepted)[1]
            requests.post(f"{server.url}/stop-processing", json={"task_id": task_id}, timeout=30)
            err = client.stderr.read()
            client.wait(timeout=60)
            peak = lines.get(timeout=10)
        finally:
            client.kill()
            path.unlink()
    peak_kb = int(re.fullmatch(r"peak_rss_kb (\d+)\n", peak)[1])
    assert peak_kb < 100 * 1024, f"the client's peak RSS was {peak_kb / 1024:.0f} MB"
    assert re.search(r"large\.wav +\d+%\|.*\| ETA [0-9:?]+, uploading 1\d\d\.\d/300\.0 MB", err)
    assert "uploading 300.0/300.0 MB" in err
    assert "stopped on the server (requested)" in err and client.returncode == 1, err


def read_lines(stream) -> queue.Queue:
    """Lines of a text stream, as they come, through a queue (so waits can time out)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


# -- errors: one line each, exit status 1 ------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["--pipeline", "nope"], r"unknown step.*\(400 invalid_pipeline\)"),
        (["--pipeline", "test_explode=at=50000"], r"processing failed: .*boom.*"),
        (["--chunk-seconds", "100"], r"chunk_seconds must be a number from 0\.25 to 60"),
    ],
)
def test_server_errors_end_with_one_line(
    live_server, audio_file, tmp_path, capsys, test_steps, arguments, reason
):
    path = audio_file(3.0)
    status = run_client("process", path, *arguments, "--server", live_server.url)
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert len(err.splitlines()) == 1 and re.search(reason, err, re.I), err


def test_a_file_over_the_upload_limit_gets_the_servers_413_message(make_server, audio_file, capsys):
    server = make_server(MAX_UPLOAD_MB=1)
    path = audio_file(20.0, "wav", rate=48000)  # 3.8 MB: refused from its Content-Length
    assert run_client("process", path, "--server", server.url) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(413 too_large)" in err, err
    assert not list((Path(server.app.config["DATA_DIR"]) / "uploads").iterdir())


def test_unreachable_server_and_missing_file_end_with_one_line(audio_file, capsys, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    assert run_client("process", audio_file(1.0), "--server", url) == 1
    assert run_client("status", "abc", "--server", url) == 1
    assert run_client("process", tmp_path / "nothing.mp3", "--server", url) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert (
        lines[0]
        == lines[1]
        == (
            f"audio-client: error: cannot reach the server at {url}: connection refused "
            "(is audio-server running?)"
        )
    )
    assert lines[2].endswith("nothing.mp3: no such file")


def test_status_stop_result_and_steps(
    live_server, listen, audio_file, tmp_path, capsys, monkeypatch
):
    url = live_server.url
    watcher = listen(url)
    path = audio_file(30.0, "wav", rate=48000)
    task = Server(url).upload(
        path,
        fields={"sid": watcher.sid, "chunk_seconds": "0.25", "pipeline": SLOW_PIPELINE},
    )
    task_id = task["task_id"]
    watcher.wait_chunk(task_id, 2)
    assert run_client("status", task_id, "--server", url) == 0
    assert run_client("stop", task_id, "--server", url) == 0
    assert watcher.wait_end(task_id)[0] == "processing_stopped"
    assert run_client("stop", task_id, "--server", url) == 0  # stopping again is fine
    monkeypatch.chdir(tmp_path)
    assert run_client("result", task_id, "--server", url) == 0
    assert run_client("steps", "--server", url) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^task\s+{task_id}$", out, re.M)
    assert re.search(r"^status\s+processing, \d+% \(\d+/120 chunks\)$", out, re.M)
    assert re.search(
        r"^pipeline\s+highpass=freq=10:order=8,lowpass=freq=12000:order=8,gain=db=-1$", out, re.M
    )
    assert f"Processing stopped: task {task_id} is stopped" in out
    saved = tmp_path / f"{path.stem}_processed.wav"
    assert f"saved {saved.name} (" in out
    assert saved.read_bytes() == result_bytes(url, task_id)
    assert re.search(
        r"^highpass\s+stateful\s+freq\s+required\s+10 \.\. 0\.49 x rate Hz\s+"
        r"highpass=freq=80:order=4$",
        out,
        re.M,
    )
    assert re.search(r"^\s+order\s+2\s+1 \.\. 8$", out, re.M)


def test_status_of_an_unknown_task_gives_the_servers_message(live_server, capsys):
    assert run_client("status", "0" * 32, "--server", live_server.url) == 1
    err = capsys.readouterr().err
    assert err.startswith("audio-client: error: ") and "(404 task_not_found)" in err


# -- the example scripts -----------------------------------------------------------------


def test_the_node_example_processes_a_file(live_server, audio_file):
    path = audio_file(3.0, "mp3")
    result = subprocess.run(
        ["node", str(ROOT / "examples" / "process.mjs"), str(path), "gain=db=-3", live_server.url],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "chunk 1/2: peak" in result.stdout and "chunk 2/2: peak" in result.stdout
    assert "done: 3.0 s of audio" in result.stdout
    saved = path.with_name(path.stem + "_processed.wav")
    assert f"saved {saved}" in result.stdout
    assert len(wav_pcm(saved.read_bytes())) == 3 * 44100 * 4
