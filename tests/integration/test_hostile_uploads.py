"""What one upload or one connection may cost: each attack against a live server, on loopback.

Descriptors past 1023, stalled and slow bodies, too many uploads or parts at
once, a disk too small for the upload or for its task, and SIGTERM while
uploads are arriving: each gets its JSON answer, leaves no file, and the
server goes on serving.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import (
    ROOT,
    Count,
    Gunicorn,
    ServerProcess,
    ffmpeg_make,
    free_port,
    launch_nginx,
    music,
    write_wav,
)
from urllib3 import encode_multipart_formdata

CONNECTIONS = 1100  # idle connections: past select()'s 1,024 descriptors


# -- helpers ---------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], *, timeout: float = 15.0, what: str = "") -> Any:
    """Return condition()'s first true value, checking every 20 ms until timeout."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what or condition}")
        time.sleep(0.02)
    return value


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def part_files(data_dir: Path) -> list[Path]:
    return sorted((Path(data_dir) / "uploads").glob("*.part"))


def data_files(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in Path(data_dir).rglob("*") if p.is_file())


def stall_upload(url: str, *, announced: int = 1_000_000, sent: int = 70_000) -> socket.socket:
    """Start an upload that announces `announced` bytes, send the first `sent`, and stall.

    The server reads a body 64 kB at a time: 70 kB make it open the .part file.
    """
    connection = socket.create_connection(("127.0.0.1", port_of(url)), timeout=30)
    head = (
        b"--stall\r\n"
        b'Content-Disposition: form-data; name="file"; filename="slow.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n"
        b"RIFF" + b"\0" * sent
    )
    connection.sendall(
        b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=stall\r\n"
        + f"Content-Length: {announced}\r\n\r\n".encode()
        + head
    )
    return connection


def answer_of(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    with connection:
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def post_wav(url: str, wav: Path, **fields: str) -> requests.Response:
    with open(wav, "rb") as file:
        return requests.post(
            f"{url}/upload", files={"file": (wav.name, file)}, data=fields, timeout=60
        )


@pytest.fixture
def wav(tmp_path) -> Path:
    return write_wav(tmp_path / "short.wav", music(1.0, rate=8000, channels=1), 8000)


@contextlib.contextmanager
def open_files_limit(needed: int) -> Iterator[None]:
    """Raise this process's soft limit of open files (for its sockets), then put it back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit of open files is {hard}; this test needs {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class LowLimitServer(ServerProcess):
    """python app.py started with 1,024 open files (soft), as many systems start processes."""

    def popen_options(self) -> dict[str, Any]:
        def low_limit() -> None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

        return {"preexec_fn": low_limit}


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Server processes a test starts (append them); closed after it."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.close()


# -- descriptors ---------------------------------------------------------------------------


def test_uploads_work_while_the_server_holds_over_1100_connections(tmp_path, servers, listen,
                                                                   wav):  # fmt: skip
    with open_files_limit(CONNECTIONS + 200):
        server = LowLimitServer(tmp_path / "data", log=tmp_path / "server.log")
        servers.append(server)
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        soft, hard = next(line for line in limits.splitlines() if "open files" in line).split()[3:5]
        assert soft == hard  # it raised its own limit: 1,024 would not hold the connections
        idle = []
        try:
            for _ in range(CONNECTIONS):
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
            fds = Path(f"/proc/{server.process.pid}/fd")
            wait_until(lambda: len(os.listdir(fds)) > CONNECTIONS, what="the server's descriptors")
            listener = listen(server.url)
            response = post_wav(server.url, wav, sid=listener.sid)
            assert response.status_code == 202, response.text
            event, _ = listener.wait_end(response.json()["task_id"], timeout=60)
            assert event == "processing_complete"
        finally:
            for connection in idle:
                connection.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def test_python_app_py_closes_idle_connections_quietly(tmp_path, servers, listen, wav):
    log = tmp_path / "server.log"
    server = ServerProcess(
        tmp_path / "data", log=log, idle_timeout_seconds=1, upload_timeout_seconds=0.5,
        log_level="INFO",
    )  # fmt: skip
    servers.append(server)
    before = threads_of(server.process.pid)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(50)]
    wait_until(lambda: threads_of(server.process.pid) >= before + 45, what="a thread each")
    started = time.monotonic()
    for connection in idle:
        assert answer_of(connection) == b""  # closed, with nothing to say
    assert time.monotonic() - started < 5
    wait_until(lambda: threads_of(server.process.pid) < before + 5, what="their threads to end")
    response = post_wav(server.url, wav)
    assert response.status_code == 202, response.text
    lines = log.read_text().splitlines()
    assert not [line for line in lines if " ERROR " in line or "timed out" in line], lines


# -- parts and files of one upload --------------------------------------------------------------


@pytest.fixture
def server(make_server):
    return make_server(MAX_UPLOAD_MB=20.0)


def assert_unharmed(server) -> None:
    """No task running, no file left, and the server answers."""
    health = requests.get(f"{server.url}/healthz", timeout=10).json()
    assert (health["active_tasks"], health["queued_tasks"]) == (0, 0)
    assert data_files(Path(server.app.config["DATA_DIR"])) == []


def test_a_second_file_part_is_400_and_only_one_file_is_ever_open(server, wav):
    content = wav.read_bytes()
    two = {"file": ("a.wav", content), "other": ("b.wav", content)}
    response = requests.post(f"{server.url}/upload", files=two, timeout=30)
    assert (response.status_code, response.json()["error"]) == (400, "too_many_files")
    assert "one file" in response.json()["message"]
    assert_unharmed(server)

    # The attack: 990 tiny file parts (each was a temporary file held open till the end).
    many = [(f"f{n}", (f"{n}.wav", b"x")) for n in range(990)]
    body, content_type = encode_multipart_formdata(many)
    response = requests.post(
        f"{server.url}/upload", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert (response.status_code, response.json()["error"]) == (400, "too_many_files")
    assert_unharmed(server)


def test_a_form_of_more_than_16_parts_is_413(server, wav):
    fields = [(f"field{n}", "x") for n in range(20)]
    body, content_type = encode_multipart_formdata([("file", ("a.wav", wav.read_bytes())), *fields])
    response = requests.post(
        f"{server.url}/upload", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert (response.status_code, response.json()["error"]) == (413, "form_too_large")
    assert "16 parts" in response.json()["message"]
    assert_unharmed(server)
    # The contract's six fields are well within it.
    full = {"pipeline": "gain", "chunk_seconds": "1", "format": "wav", "stream_audio": "false"}
    response = post_wav(server.url, wav, **full)
    assert response.status_code == 202, response.text
    assert server.engine.get(response.json()["task_id"]).retired.wait(30)


# -- slow and stalled bodies, and how many at once ---------------------------------------------


def test_a_stalled_upload_is_cut_off_with_408_and_its_file_deleted(make_server, wav):
    server = make_server(UPLOAD_TIMEOUT_SECONDS=1.0)
    data = Path(server.app.config["DATA_DIR"])
    stalled = stall_upload(server.url)
    started = time.monotonic()
    wait_until(lambda: part_files(data), what="the stalled upload's .part file")
    response = post_wav(server.url, wav)  # served meanwhile
    assert response.status_code == 202, response.text
    answer = answer_of(stalled)  # then the connection is closed
    assert 1.0 <= time.monotonic() - started < 4.0
    assert answer.startswith(b"HTTP/1.1 408") and b'"upload_timeout"' in answer
    assert b"sent nothing for 1 s" in answer
    assert part_files(data) == []
    assert server.engine.get(response.json()["task_id"]).retired.wait(30)


def test_an_upload_that_keeps_sending_is_not_cut_off(make_server, tmp_path):
    server = make_server(UPLOAD_TIMEOUT_SECONDS=1.5)
    song = write_wav(tmp_path / "song.wav", music(16.0, rate=8000, channels=1), 8000)  # 256 kB
    body, content_type = encode_multipart_formdata([("file", ("song.wav", song.read_bytes()))])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=30) as client:
        client.sendall(
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        for offset in range(0, len(body), 32768):  # 32 kB every 0.3 s: a slow client
            client.sendall(body[offset : offset + 32768])
            time.sleep(0.3)
        answer = answer_of(client)
    assert time.monotonic() - started > 2.0  # longer than the timeout, all told
    assert answer.startswith(b"HTTP/1.1 202"), answer
    task_id = answer.split(b'"task_id":"')[1][:32].decode()
    assert server.engine.get(task_id).retired.wait(30)


def test_uploads_beyond_max_uploads_are_503_with_retry_after(make_server, wav):
    server = make_server(MAX_UPLOADS=2, UPLOAD_TIMEOUT_SECONDS=30.0)
    data = Path(server.app.config["DATA_DIR"])
    stalled = [stall_upload(server.url) for _ in range(2)]
    wait_until(lambda: len(part_files(data)) == 2, what="two uploads in progress")
    refused = post_wav(server.url, wav)
    assert refused.status_code == 503 and refused.json()["error"] == "at_capacity"
    assert "receiving 2 uploads" in refused.json()["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    stalled.pop().close()  # one client gives up: its slot comes back
    wait_until(lambda: len(part_files(data)) == 1, what="the abandoned upload to end")
    accepted = wait_until(
        lambda: (answer := post_wav(server.url, wav)).status_code == 202 and answer,
        what="a slot for the upload",
    )
    assert server.engine.get(accepted.json()["task_id"]).retired.wait(30)
    stalled.pop().close()


def test_gunicorn_cuts_off_stalled_uploads_and_keeps_serving(tmp_path, servers, listen, wav):
    server = Gunicorn(tmp_path / "data", threads=8, max_uploads=4, upload_timeout_seconds=1)
    servers.append(server)
    stalled = [stall_upload(server.url) for _ in range(8)]  # as many as its threads
    wait_until(lambda: len(part_files(server.data_dir)) == 4, what="four uploads in progress")
    started = time.monotonic()
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    answers = [answer_of(connection) for connection in stalled]
    statuses = sorted(answer.split(b" ", 2)[1] for answer in answers)
    assert statuses == [b"408"] * 4 + [b"503"] * 4  # cut off, or refused at once
    assert time.monotonic() - started < 5
    assert part_files(server.data_dir) == []
    listener = listen(server.url)
    response = post_wav(server.url, wav, sid=listener.sid)
    assert response.status_code == 202, response.text
    assert listener.wait_end(response.json()["task_id"])[0] == "processing_complete"


# -- the disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[[int], Path]]:
    """Mount small tmpfs disks (size in MB) for a data folder; unmount them after."""
    mounts: list[Path] = []

    def mount(megabytes: int) -> Path:
        point = tmp_path / f"disk-{len(mounts)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(point)],
            capture_output=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small disk (needs root): {result.stderr.decode()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_an_upload_larger_than_the_free_disk_is_507(small_disk, make_server, tmp_path, wav):
    data = small_disk(4) / "data"
    server = make_server(DATA_DIR=str(data), DISK_RESERVE_MB=0, MAX_UPLOAD_MB=50.0)
    big = noise_wav(tmp_path / "big.wav", megabytes=6)
    body, content_type = encode_multipart_formdata([("file", ("big.wav", big.read_bytes()))])

    # Announced: refused before a byte of it is stored.
    response = requests.post(
        f"{server.url}/upload", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert (response.status_code, response.json()["error"]) == (507, "insufficient_storage")
    assert "no room for this upload" in response.json()["message"]
    assert data_files(data) == []

    # Not announced (chunked): the disk fills up while it is written.
    pieces = (body[start : start + 65536] for start in range(0, len(body), 65536))
    response = requests.post(
        f"{server.url}/upload", data=pieces, headers={"Content-Type": content_type}, timeout=30
    )
    assert (response.status_code, response.json()["error"]) == (507, "insufficient_storage")
    assert "disk is full" in response.json()["message"]
    assert data_files(data) == []

    response = post_wav(server.url, wav)  # the space came back
    assert response.status_code == 202, response.text
    assert server.engine.get(response.json()["task_id"]).retired.wait(30)


def noise_wav(path: Path, *, megabytes: int) -> Path:
    seconds = megabytes * 1024 * 1024 / (44100 * 2 * 2)
    return write_wav(path, music(seconds), 44100)


def silence_flac(path: Path, *, seconds: float) -> Path:
    """A small FLAC that decodes to much: stereo 48 kHz silence."""
    source = f"-f lavfi -i anullsrc=r=48000:cl=stereo -t {seconds}"
    return ffmpeg_make(f"{source} -c:a flac", path)


def test_a_task_the_disk_cannot_hold_is_507(small_disk, make_server, tmp_path):
    data = small_disk(48) / "data"
    server = make_server(DATA_DIR=str(data), DISK_RESERVE_MB=8)
    # 10 minutes of 48 kHz stereo: a 115 MB result, from a file of a few kB.
    bomb = silence_flac(tmp_path / "long.flac", seconds=600)
    response = post_wav(server.url, bomb)
    assert (response.status_code, response.json()["error"]) == (507, "insufficient_storage")
    message = response.json()["message"]
    assert "cannot hold this task" in message and "8 MB of them kept in reserve" in message
    assert data_files(data) == []
    # With a format other than WAV, the encoded copy counts too: 2 x 29 MB do not fit in 40.
    medium = silence_flac(tmp_path / "medium.flac", seconds=160)
    response = post_wav(server.url, medium, format="flac", pipeline="gain")
    assert response.status_code == 507
    response = post_wav(server.url, medium, pipeline="gain")
    assert response.status_code == 202, response.text
    assert server.engine.get(response.json()["task_id"]).retired.wait(30)


def test_a_task_that_would_eat_into_the_reserve_is_507(make_server, tmp_path, wav):
    """The same, on any disk and without root: a reserve of all but 1 GB of the free space."""
    data = tmp_path / "data"
    data.mkdir()
    reserve_mb = (shutil.disk_usage(data).free - 1024**3) / 1024**2
    server = make_server(DATA_DIR=str(data), DISK_RESERVE_MB=reserve_mb)
    # An hour of 48 kHz stereo with a global step and FLAC: 1.4 GB of spool, 0.7 GB of WAV and
    # as much of FLAC, from a file of a few kB (other work on the disk may take or free some).
    hour = silence_flac(tmp_path / "hour.flac", seconds=3600)
    response = post_wav(server.url, hour, pipeline="normalize", format="flac")
    assert (response.status_code, response.json()["error"]) == (507, "insufficient_storage")
    assert data_files(data) == []
    response = post_wav(server.url, wav, pipeline="normalize", format="flac")
    assert response.status_code == 202, response.text
    assert server.engine.get(response.json()["task_id"]).retired.wait(30)


def test_running_tasks_keep_the_room_they_will_write(small_disk, make_server, tmp_path,
                                                     test_steps):  # fmt: skip
    data = small_disk(48) / "data"
    server = make_server(DATA_DIR=str(data), DISK_RESERVE_MB=0)
    song = silence_flac(tmp_path / "song.flac", seconds=160)  # a 31 MB result each
    first = post_wav(server.url, song, pipeline="test_count")  # held at its first chunk
    assert first.status_code == 202, first.text
    Count.wait_for(1)
    second = post_wav(server.url, song, pipeline="gain")
    assert (second.status_code, second.json()["error"]) == (507, "insufficient_storage")
    assert "with what the running tasks have still to write" in second.json()["message"]
    Count.gate.set()
    assert server.engine.get(first.json()["task_id"]).retired.wait(60)
    requests.delete(f"{server.url}/tasks/{first.json()['task_id']}", timeout=10)
    again = post_wav(server.url, song, pipeline="gain")
    assert again.status_code == 202, again.text
    assert server.engine.get(again.json()["task_id"]).retired.wait(60)


# -- shutdown ------------------------------------------------------------------------------------


@pytest.mark.parametrize("program", ["python app.py", "gunicorn"])
def test_sigterm_during_slow_uploads_leaves_no_part_file(tmp_path, servers, program):
    data = tmp_path / "data"
    settings = {"upload_timeout_seconds": 60}
    if program == "gunicorn":
        server = Gunicorn(data, **settings)
    else:
        server = ServerProcess(data, log=tmp_path / "server.log", **settings)
    servers.append(server)
    stalled = [stall_upload(server.url) for _ in range(6)]
    wait_until(lambda: len(part_files(data)) == 6, what="six uploads in progress")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) == 0
    assert part_files(data) == []
    for connection in stalled:
        connection.close()


# -- production: nginx in front ---------------------------------------------------------------


def readme_nginx_config(*, port: int, upstream: int) -> str:
    """The README's nginx configuration, on these ports, with one-second client timeouts."""
    block = re.search(r"```nginx\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "the README has no nginx configuration"
    config = block.group(1)
    for old, new in [
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("proxy_pass http://127.0.0.1:5001;", f"proxy_pass http://127.0.0.1:{upstream};"),
        ("client_header_timeout 10s;", "client_header_timeout 1s;"),
        ("client_body_timeout 30s;", "client_body_timeout 1s;"),
    ]:
        assert old in config, f"the README's nginx configuration has no {old!r}"
        config = config.replace(old, new)
    return config


class Nginx:
    """nginx in a folder of its own, in front of a server, with the README's configuration."""

    def __init__(self, folder: Path, *, upstream: int) -> None:
        binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if binary is None:
            if os.environ.get("CI", "").lower() in ("true", "1"):
                pytest.fail("no nginx (CI=true: this test must run)", pytrace=False)
            pytest.skip("no nginx (as root: apt-get install nginx)")
        folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "error.log"
        self.process = launch_nginx(
            binary, folder, readme_nginx_config(port=self.port, upstream=upstream)
        )
        wait_until(self._listening, what=f"nginx on {self.url}")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"nginx exited: {self.log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def test_nginx_in_front_takes_slow_clients_off_gunicorn(tmp_path, servers, listen, wav):
    server = Gunicorn(tmp_path / "data", threads=40)
    servers.append(server)
    proxy = Nginx(tmp_path / "nginx", upstream=server.port)
    try:
        clients = [listen(proxy.url) for _ in range(30)]  # each holds a gunicorn thread
        stalled = [stall_upload(proxy.url) for _ in range(40)]
        idle = [socket.create_connection(("127.0.0.1", proxy.port), 30) for _ in range(40)]
        started = time.monotonic()
        health = requests.get(f"{proxy.url}/healthz", timeout=5)
        assert health.status_code == 200 and time.monotonic() - started < 1.0
        response = post_wav(proxy.url, wav, sid=clients[0].sid)
        assert response.status_code == 202, response.text
        assert clients[0].wait_end(response.json()["task_id"])[0] == "processing_complete"
        # nginx drops the slow clients (408 for a stalled body); gunicorn never saw them.
        for connection in stalled:
            answer = answer_of(connection)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]
        for connection in idle:
            assert answer_of(connection) == b""
        assert time.monotonic() - started < 10
        assert part_files(server.data_dir) == []
    finally:
        proxy.close()
