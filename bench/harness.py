"""The pieces the benchmark is made of: audio files, a server process, a listening client.

Everything is real: the server is ``python app.py`` in its own process, the
client a Socket.IO client over WebSocket receiving every chunk's audio, the
audio MP3 files made by the project's own ffmpeg; for cluster mode, Debian's
``redis-server`` and ``python app.py worker`` processes (the tests use them too).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
import requests

from audioclient import InOrderClient
from audioserver.audio.ffmpeg import find_ffmpeg
from audioserver.cluster import WORKERS

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "cache"


def make_mp3(seconds: float) -> Path:
    """Return a stereo 44.1 kHz MP3 of noise and tones (made once, then cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"bench-{seconds:g}s.mp3"
    if path.exists():
        return path
    part = path.with_suffix(".part.mp3")
    sources = (
        f"sine=frequency=220:duration={seconds}:sample_rate=44100,"
        f"volume=0.3[a];anoisesrc=duration={seconds}:sample_rate=44100:amplitude=0.1[b];"
        f"sine=frequency=3300:duration={seconds}:sample_rate=44100,volume=0.1[c];"
        "[a][b][c]amix=inputs=3:normalize=0,aformat=channel_layouts=stereo"
    )
    subprocess.run(
        [find_ffmpeg(), "-v", "error", "-y", "-filter_complex", sources, "-c:a", "libmp3lame",
         "-b:a", "192k", str(part)],
        check=True,
    )  # fmt: skip
    part.rename(path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """The server in a process of its own, on a free port, as users run it.

    ``python app.py`` with ``--port``, ``--data-dir`` and the keyword settings
    as options; subclasses run another program (``program``) or another command
    line (``command``). Without a data directory it gets a temporary one,
    removed by ``close``. The tests use it too.
    """

    def __init__(
        self, data_dir: Path | None = None, *, log: Path | None = None, **settings: Any
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_data = data_dir is None
        self.data_dir = Path(
            tempfile.mkdtemp(prefix="server-data-") if data_dir is None else data_dir
        )
        self.log = log
        output = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                self.command({"log_level": "WARNING", **settings}),
                stdout=output, stderr=subprocess.STDOUT, **self.popen_options(),
            )  # fmt: skip
        finally:
            if log:
                output.close()
        try:
            self._wait_until_serving()
        except BaseException:
            self.close()
            raise

    def program(self) -> list[str]:
        return [sys.executable, str(ROOT / "app.py")]

    def command(self, settings: dict[str, Any]) -> list[str]:
        arguments = ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        for name, value in settings.items():
            arguments += [f"--{name.replace('_', '-')}", str(value)]
        return [*self.program(), *arguments]

    def popen_options(self) -> dict[str, Any]:
        return {}

    def _wait_until_serving(self, timeout: float = 60) -> None:
        """Wait until GET /healthz answers; fail at once, with the log, if the process ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/healthz", timeout=5).raise_for_status()
                return
            except requests.RequestException:  # not listening yet, or still importing
                try:
                    self.process.wait(timeout=0.05)  # waiting on the process: did it end?
                except subprocess.TimeoutExpired:
                    continue
                log = self.log.read_text(errors="replace")[-3000:] if self.log else ""
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}\n{log}"
                ) from None
        raise RuntimeError(f"the server did not answer on {self.url} in {timeout} s")

    def cpu_seconds(self) -> float:
        """CPU time the server process itself has used so far (its threads; not its children)."""
        return _cpu_seconds(self.process.pid)

    def children_cpu_seconds(self) -> float:
        """CPU time of the server's child processes that have ended (its decoders, encoders)."""
        return _cpu_seconds(self.process.pid, children=True)

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the server process so far (Linux: VmHWM)."""
        return int(_status_field(self.process.pid, "VmHWM").split()[0]) / 1024

    def open_files(self) -> int:
        """File descriptors the server process holds now (Linux)."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def threads(self) -> int:
        """Threads of the server process now (Linux)."""
        return int(_status_field(self.process.pid, "Threads"))

    def children_memory_mb(self) -> tuple[int, float]:
        """How many child processes (decoders, encoders) the server has, and their memory.

        Their proportional set size summed (Linux: Pss), so that the pages every
        ffmpeg shares (the binary, the libraries) count once, not once per process.
        """
        children = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _parent(int(entry.name)) == self.process.pid
        ]
        return len(children), sum(_pss_kb(pid) for pid in children) / 1024

    def close(self) -> None:
        _terminate(self.process, 15)
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def find_redis_server() -> str | None:
    """Debian's redis-server (on PATH, or in /usr/bin), or None."""
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")


class RedisServer:
    """redis-server on 127.0.0.1 and a free port, no persistence, its files in a folder."""

    def __init__(self, folder: Path) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server (as root: apt-get install redis-server)")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = folder / "redis.log"
        arguments = ["--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(folder),
                     "--save", "", "--appendonly", "no", "--logfile", str(self.log)]  # fmt: skip
        self.process = subprocess.Popen([binary, *arguments])
        self.client = redis.Redis.from_url(self.url)
        try:
            self._wait_until_ready()
        except BaseException:
            self.close()
            raise

    def _wait_until_ready(self, timeout: float = 10.0) -> None:
        """Wait on the server's own answer to PING (a refused connection means not yet)."""
        client = redis.Redis(port=self.port, socket_connect_timeout=timeout)
        for _ in range(int(timeout * 20)):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log.read_text()[-2000:]}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                # Not listening yet: ask the process, which returns as soon as it ends.
                try:
                    self.process.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    continue
        raise RuntimeError("redis-server did not answer PING")

    def stats(self) -> dict[str, int]:
        """Commands served so far, in all and by name (calls), and bytes in and out."""
        info = self.client.info("stats")
        commands = self.client.info("commandstats")
        counts = {"commands": int(info["total_commands_processed"]),
                  "net_bytes": int(info["total_net_input_bytes"])
                  + int(info["total_net_output_bytes"])}  # fmt: skip
        for name, stat in commands.items():
            counts[name.removeprefix("cmdstat_")] = int(stat["calls"])
        return counts

    def memory(self, keys: list[str]) -> int:
        """Bytes Redis holds for these keys (MEMORY USAGE, every element counted)."""
        return sum(int(self.client.memory_usage(key, samples=0) or 0) for key in keys)

    def close(self) -> None:
        self.client.close()
        _terminate(self.process, 10)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class WorkerProcess:
    """python app.py worker: takes the cluster's tasks from the queue."""

    def __init__(
        self,
        *,
        redis_url: str,
        data_dir: Path,
        log: Path,
        workers: int = 1,
        max_active_tasks: int = 2,
        log_level: str = "INFO",
    ) -> None:
        self.log = log
        arguments = ["worker", "--redis-url", redis_url, "--data-dir", str(data_dir),
                     "--workers", str(workers), "--max-active-tasks", str(max_active_tasks),
                     "--log-level", log_level]  # fmt: skip
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "app.py"), *arguments],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def wait_until_alive(self, client: Any, timeout: float = 60.0) -> None:
        """Wait until the worker's heartbeat is in Redis; fail at once, with its log, if it ends."""
        pid = self.process.pid
        deadline = time.monotonic() + timeout
        while not any(key.decode().endswith(f"-{pid}") for key in client.scan_iter(f"{WORKERS}*")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {pid} did not start in {timeout} s")
            try:
                self.process.wait(timeout=0.05)  # waiting on the process: did it end?
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"the worker exited: {self.log.read_text()[-3000:]}")

    def ran(self, task_id: str) -> bool:
        """Whether this worker ran the task (its log has the task's "started" line)."""
        return any(
            f"[task {task_id}]" in line and line.endswith("started")
            for line in self.log.read_text(errors="replace").splitlines()
        )

    def cpu_seconds(self) -> float:
        """CPU time the worker process has used so far (its threads; not its decoders)."""
        return _cpu_seconds(self.process.pid)

    def close(self) -> None:
        _terminate(self.process, 20)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not ended after timeout seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_seconds(pid: int, *, children: bool = False) -> float:
    """CPU time (user + system) of a process's threads, or of its children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11  # utime, stime; cutime, cstime (after the command's ")")
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def _status_field(pid: int, name: str, missing: str | None = None) -> str:
    """A field of /proc/<pid>/status (missing, if given, when the process has gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        if missing is None:
            raise
        return missing
    for line in lines:
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    if missing is None:
        raise RuntimeError(f"no {name} in /proc/{pid}/status")
    return missing


def _pss_kb(pid: int) -> int:
    """Proportional set size of a process in kB (0 if it has gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("Pss:")), 0)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the command in parentheses may hold spaces


class Client:
    """A Socket.IO client over WebSocket that receives every chunk and counts bytes on the wire."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = InOrderClient(reconnection=False)
        self.wire_bytes = 0
        self.audio_bytes = 0
        self.first_chunk: dict[str, float] = {}
        self.chunk_counts: dict[str, int] = {}
        self.ends: dict[str, tuple[str, dict[str, Any], float]] = {}
        self._condition = threading.Condition()
        self.sio.on("audio_chunk", self._on_chunk)
        for name in ("processing_complete", "processing_stopped", "processing_error"):
            self.sio.on(name, self._ender(name))
        self.sio.connect(url, transports=["websocket"], wait_timeout=30)
        self._count_wire_bytes()

    def _count_wire_bytes(self) -> None:
        websocket = self.sio.eio.ws
        receive = websocket.recv

        def counting_recv():
            data = receive()
            self.wire_bytes += len(data) if isinstance(data, bytes) else len(data.encode())
            return data

        websocket.recv = counting_recv

    def _on_chunk(self, chunk: dict[str, Any]) -> None:
        self.audio_bytes += len(chunk.get("audio", b""))
        with self._condition:
            self.first_chunk.setdefault(chunk["task_id"], time.perf_counter())
            self.chunk_counts[chunk["task_id"]] = self.chunk_counts.get(chunk["task_id"], 0) + 1
            self._condition.notify_all()

    def _ender(self, name: str):
        def end(data: dict[str, Any]) -> None:
            with self._condition:
                self.ends[data["task_id"]] = (name, data, time.perf_counter())
                self._condition.notify_all()

        return end

    def upload(self, path: Path, **fields: Any) -> dict[str, Any]:
        with open(path, "rb") as file:
            response = requests.post(
                f"{self.url}/upload",
                files={"file": (path.name, file)},
                data={"sid": self.sio.get_sid(), **fields},
                timeout=300,
            )
        response.raise_for_status()
        return response.json()

    def subscribe(self, task_id: str, from_index: int = 0) -> dict[str, Any]:
        """Subscribe to a task's chunks from from_index (a replay, for a task that has ended)."""
        ack: dict[str, Any] = self.sio.call(
            "subscribe", {"task_id": task_id, "from_index": from_index}, timeout=30
        )
        assert ack.get("ok"), ack
        return ack

    def wait_first_chunk(self, task_id: str, timeout: float = 600) -> float:
        with self._condition:
            assert self._condition.wait_for(lambda: task_id in self.first_chunk, timeout)
            return self.first_chunk[task_id]

    def wait_chunks(self, task_id: str, count: int, timeout: float = 600) -> None:
        """Wait until a task's count of chunks received reaches count, or the task ends."""
        with self._condition:
            assert self._condition.wait_for(
                lambda: self.chunk_counts.get(task_id, 0) >= count or task_id in self.ends, timeout
            ), f"{task_id}: {self.chunk_counts.get(task_id, 0)} of {count} chunks"

    def wait_end(self, task_id: str, timeout: float = 3600) -> tuple[str, dict[str, Any], float]:
        with self._condition:
            assert self._condition.wait_for(lambda: task_id in self.ends, timeout)
            return self.ends[task_id]

    def close(self) -> None:
        websocket = getattr(self.sio.eio, "ws", None)
        if websocket is not None:
            close = websocket.close
            websocket.close = lambda *args, **kwargs: close(timeout=0.2)
        self.sio.disconnect()


def run_command(command: list[str], **kwargs: Any) -> float:
    """Run a command; return its wall time in seconds."""
    return run_command_cpu(command, **kwargs)[0]


def run_command_cpu(command: list[str], **kwargs: Any) -> tuple[float, float]:
    """Run a command; return its wall time and the CPU time it used (user + system), in seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def ffmpeg_normalize_command(source: Path, output: Path) -> tuple[list[str], dict[str, str]]:
    """The ffmpeg-normalize job equal to highpass=freq=80,loudness=target=-14 (wav out)."""
    executable = shutil.which("ffmpeg-normalize", path=str(Path(sys.executable).parent))
    if executable is None:
        raise RuntimeError(
            "ffmpeg-normalize is not installed (pip install -r bench/requirements.txt)"
        )
    env = {**os.environ, "FFMPEG_PATH": find_ffmpeg()}
    command = [executable, str(source), "-nt", "ebu", "-t", "-14", "-prf", "highpass=f=80",
               "-o", str(output), "-f", "-q"]  # fmt: skip
    return command, env
