"""Test helpers: signals made in code, encoded with the project's ffmpeg, and live clients.

No audio file is stored in the repository; every test makes what it needs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import random
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from audioclient import InOrderClient
from audioserver.audio.ffmpeg import configure_pydub, find_ffmpeg
from audioserver.audio.pipeline import Pipeline
from audioserver.audio.steps import Block, Param, Step
from audioserver.server import make_server
from bench.harness import ServerProcess, free_port  # noqa: F401  (for the tests)

ROOT = Path(__file__).resolve().parent.parent
TERMINAL_EVENTS = ("processing_complete", "processing_stopped", "processing_error")
TASK_EVENTS = ("audio_chunk", *TERMINAL_EVENTS)


# -- signals ---------------------------------------------------------------------


def sine(
    seconds: float,
    *,
    rate: int = 44100,
    freq: float = 440.0,
    amplitude: float = 0.5,
    channels: int = 2,
) -> np.ndarray:
    """A sine of shape (frames, channels); each channel a slightly different phase."""
    t = np.arange(round(seconds * rate)) / rate
    phases = np.arange(channels)[np.newaxis, :] * 0.3
    return amplitude * np.sin(2 * np.pi * freq * t[:, np.newaxis] + phases)


def noise(
    seconds: float, *, rate: int = 44100, amplitude: float = 0.3, channels: int = 2, seed: int = 0
) -> np.ndarray:
    """White noise of shape (frames, channels), clipped to +-amplitude*3."""
    generator = np.random.default_rng(seed)
    signal = generator.normal(0.0, amplitude, size=(round(seconds * rate), channels))
    return np.clip(signal, -1.0, 1.0)


def music(seconds: float, *, rate: int = 44100, channels: int = 2, seed: int = 1) -> np.ndarray:
    """Something like music for tests: tones, a sweep, some noise and a DC offset and rumble."""
    frames = round(seconds * rate)
    t = np.arange(frames) / rate
    sweep = np.sin(2 * np.pi * (50 * t + 400 * t**2 / max(seconds, 1e-9)))
    tones = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 3300 * t)
    rumble = 0.2 * np.sin(2 * np.pi * 20 * t) + 0.05
    mono = 0.25 * sweep + tones + rumble
    stereo = np.stack([mono, np.roll(mono, 37)][:channels], axis=1)
    if channels > 2:
        stereo = np.repeat(mono[:, np.newaxis], channels, axis=1)
    return np.clip(
        0.6 * stereo + noise(seconds, rate=rate, amplitude=0.02, channels=channels, seed=seed),
        -1,
        1,
    )


# -- running steps -----------------------------------------------------------------


def run_whole(spec: str, x: np.ndarray, rate: int) -> np.ndarray:
    """Process a whole signal in one piece."""
    return Pipeline.parse(spec)(x, rate)[0]


def chunk_output(
    stage, x: np.ndarray, start: int, stop: int, pre_roll: int, post_roll: int = 0, *, rate: int
) -> np.ndarray:
    """Run one chunk [start, stop) of x through a stage with the given pre-roll and look-ahead."""
    first, last = max(0, start - pre_roll), min(len(x), stop + post_roll)
    block = Block(x[first:last], rate, first, start - first, last - stop, stop == len(x))
    return stage.run(block).trimmed().samples


# -- files -----------------------------------------------------------------------


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Write 16-bit PCM WAV."""
    samples = samples if samples.ndim == 2 else samples[:, np.newaxis]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(to_int16(samples).tobytes())
    return Path(path)


def write_float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Write 32-bit float WAV (WAVE_FORMAT_IEEE_FLOAT): samples beyond full scale are kept."""
    samples = samples if samples.ndim == 2 else samples[:, np.newaxis]
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    channels = samples.shape[1]
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
    header = b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    Path(path).write_bytes(header + chunks + data)
    return Path(path)


def ffmpeg_decode_float(path: Path) -> np.ndarray:
    """Decode a file with ffmpeg's own CLI to float32 (overs kept): float64, (frames, channels)."""
    command = [find_ffmpeg(), "-v", "error", "-i", str(path), "-f", "wav", "-c:a", "pcm_f32le"]
    output = subprocess.run([*command, "-"], capture_output=True, check=True).stdout
    channels = int.from_bytes(output[22:24], "little")
    data_at = output.index(b"data") + 8
    return np.frombuffer(output[data_at:], dtype="<f4").reshape(-1, channels).astype(np.float64)


def read_wav(source: Path | bytes) -> tuple[np.ndarray, int]:
    """Read a 16-bit WAV (file or bytes) as float64 in [-1, 1) of shape (frames, channels)."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with handle, wave.open(handle) as wav:
        channels, rate = wav.getnchannels(), wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return data.reshape(-1, channels) / 32768.0, rate


def wav_pcm(source: bytes) -> bytes:
    """Return the raw PCM of a WAV file's bytes."""
    with wave.open(io.BytesIO(source)) as wav:
        return wav.readframes(wav.getnframes())


def pcm16(data: bytes, channels: int) -> np.ndarray:
    """Interleaved 16-bit PCM bytes as int16 of shape (frames, channels)."""
    return np.frombuffer(data, dtype="<i2").reshape(-1, channels)


def encode(samples: np.ndarray, rate: int, path: Path) -> Path:
    """Write samples to path, encoded by its extension (wav mp3 ogg flac m4a opus) with pydub."""
    configure_pydub(find_ffmpeg())
    from pydub import AudioSegment

    samples = samples if samples.ndim == 2 else samples[:, np.newaxis]
    segment = AudioSegment(
        data=to_int16(samples).tobytes(),
        sample_width=2,
        frame_rate=rate,
        channels=samples.shape[1],
    )
    extension = Path(path).suffix.lstrip(".")
    formats = {"m4a": "ipod", "ogg": "ogg", "opus": "opus"}
    codecs = {"ogg": "libvorbis", "opus": "libopus", "m4a": "aac"}
    exported = segment.export(
        str(path), format=formats.get(extension, extension), codec=codecs.get(extension)
    )
    exported.close()
    return Path(path)


def ffmpeg_make(arguments: str, output: Path) -> Path:
    """Make a file with ffmpeg's own generators, e.g. ffmpeg_make("-f lavfi -i sine=d=1", path)."""
    command = [find_ffmpeg(), "-v", "error", *shlex.split(arguments), str(output)]
    subprocess.run(command, check=True)
    return Path(output)


def ffmpeg_decode(path: Path, *, rate: int | None = None) -> np.ndarray:
    """Decode a file with ffmpeg's own CLI (an independent reference): float64, (frames, ch)."""
    command = [find_ffmpeg(), "-v", "error", "-i", str(path), "-f", "wav", "-c:a", "pcm_s16le"]
    if rate:
        command += ["-ar", str(rate)]
    output = subprocess.run([*command, "-"], capture_output=True, check=True).stdout
    # ffmpeg's streamed WAV header has no sizes: parse the channel count, take the rest.
    channels = int.from_bytes(output[22:24], "little")
    data_at = output.index(b"data") + 8
    return np.frombuffer(output[data_at:], dtype="<i2").reshape(-1, channels) / 32768.0


# -- a live server and live clients ------------------------------------------------


class LiveServer:
    """The app served by a real threaded HTTP server on a free port, in a thread."""

    def __init__(self, app) -> None:
        self.app = app
        self.engine = app.extensions["audio_engine"]
        self._server = make_server(app, "127.0.0.1", 0)  # as python app.py serves
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self.engine.shutdown()


class Listener:
    """A real python-socketio client over WebSocket that records every task event it gets."""

    def __init__(self, url: str, *, transports: tuple[str, ...] = ("websocket",)) -> None:
        self.client = InOrderClient(reconnection=False)
        self.events: list[tuple[str, dict[str, Any], float]] = []
        self._condition = threading.Condition()
        for name in TASK_EVENTS:
            self.client.on(name, self._recorder(name))
        self.client.connect(url, transports=list(transports), wait_timeout=10)

    def _recorder(self, name: str) -> Callable[[dict[str, Any]], None]:
        def record(data: dict[str, Any]) -> None:
            with self._condition:
                self.events.append((name, data, time.monotonic()))
                self._condition.notify_all()

        return record

    @property
    def sid(self) -> str:
        return self.client.get_sid()

    def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], *, timeout: float = 60.0
    ) -> tuple[str, dict[str, Any], float]:
        """Return the first recorded event matching predicate, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for event in self.events:
                    if predicate(event[0], event[1]):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching event in {timeout} s; got {self.summary()}")
                self._condition.wait(remaining)

    def wait_end(self, task_id: str, *, timeout: float = 60.0) -> tuple[str, dict[str, Any]]:
        """Return the terminal event of a task, waiting for it."""
        name, data, _ = self.wait_for(
            lambda name, data: name in TERMINAL_EVENTS and data["task_id"] == task_id,
            timeout=timeout,
        )
        return name, data

    def wait_chunk(self, task_id: str, index: int, *, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_for(
            lambda name, data: (
                name == "audio_chunk" and data["task_id"] == task_id and data["index"] >= index
            ),
            timeout=timeout,
        )[1]

    def of_task(self, task_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self._condition:
            return [(name, data) for name, data, _ in self.events if data["task_id"] == task_id]

    def chunks(self, task_id: str) -> list[dict[str, Any]]:
        return [data for name, data in self.of_task(task_id) if name == "audio_chunk"]

    def summary(self) -> str:
        with self._condition:
            names = [(name, data.get("index", "")) for name, data, _ in self.events[-5:]]
        return f"{len(self.events)} events, last {names}"

    def close(self) -> None:
        websocket = getattr(self.client.eio, "ws", None)
        if websocket is not None:
            # websocket-client waits 3 s for the server's close frame, which the
            # client's own read thread has often consumed already.
            websocket.close = functools.partial(websocket.close, timeout=0.2)
        self.client.disconnect()


class Recorder:
    """A publisher for engine tests: records what each client would get, in order."""

    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.received: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.prepared: list[tuple[str, dict[str, Any]]] = []  # every event encoded
        self._condition = threading.Condition()

    def connect(self, sid: str) -> str:
        with self._condition:
            self.connected.add(sid)
            self.received[sid] = []
        return sid

    def disconnect(self, sid: str) -> None:
        with self._condition:
            self.connected.discard(sid)

    def emit(self, event: str, data: dict[str, Any], *, to: str) -> None:
        """What a client gets: one event."""
        with self._condition:
            if to in self.connected:
                self.received[to].append((event, data))
            self._condition.notify_all()

    def encode(self, event: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        with self._condition:
            self.prepared.append((event, data))
        return event, data

    def send(self, sid: str, packet: tuple[str, dict[str, Any]]) -> None:
        self.emit(*packet, to=sid)

    def backlog(self, sid: str) -> int | None:
        return 0 if sid in self.connected else None

    def resolve(self, sid: str) -> str | None:
        return sid if sid in self.connected else None

    def wait_end(self, sid: str, task_id: str, *, timeout: float = 60.0) -> tuple[str, dict]:
        """Return the terminal event a client got for a task, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for event, data in self.received[sid]:
                    if event in TERMINAL_EVENTS and data["task_id"] == task_id:
                        return event, data
                if not self._condition.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{sid} got no end of {task_id}")

    def wait_chunks(self, sid: str, task_id: str, count: int, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(self.chunks(sid, task_id)) < count:
                if not self._condition.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{sid} got fewer than {count} chunks of {task_id}")

    def chunks(self, sid: str, task_id: str) -> list[dict[str, Any]]:
        return [d for e, d in self.received[sid] if e == "audio_chunk" and d["task_id"] == task_id]

    def events(self, sid: str, task_id: str) -> list[str]:
        return [event for event, data in self.received[sid] if data["task_id"] == task_id]


class Gunicorn(ServerProcess):
    """The documented deployment: gunicorn -c gunicorn.conf.py, settings in the environment."""

    def __init__(self, data_dir: Path, *, threads: int = 20, **settings: Any) -> None:
        self.environment = {
            "HOST": "127.0.0.1",
            "GUNICORN_THREADS": str(threads),
            "AUDIO_DATA_DIR": str(data_dir),
            "AUDIO_WORKERS": "2",
            "AUDIO_LOG_LEVEL": "WARNING",
            **{f"AUDIO_{name.upper()}": str(value) for name, value in settings.items()},
        }
        super().__init__(data_dir)

    def command(self, settings: dict[str, Any]) -> list[str]:
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
        return [gunicorn, "-c", "gunicorn.conf.py", "audioserver.wsgi:app"]

    def popen_options(self) -> dict[str, Any]:
        env = {**os.environ, **self.environment, "PORT": str(self.port)}
        return {"cwd": ROOT, "env": env, "start_new_session": True}

    def close(self) -> None:
        super().close()
        with contextlib.suppress(ProcessLookupError):  # a worker the master left behind
            os.killpg(self.process.pid, signal.SIGKILL)


# -- steps that exist only in tests (registered by the test_steps fixture) -----------
#
# Defining a Step subclass registers it; these are taken out of the registry
# again at once and put back only for the tests that ask for them.


class Jitter(Step):
    """A test step that finishes chunks out of order (workers sleep a random time)."""

    name = "test_jitter"
    description = "sleeps a little, at random"

    def process(self, block: Block) -> Block:
        time.sleep(random.Random(block.start).uniform(0, 0.01))
        return block


class Explode(Step):
    """A test step that fails on purpose at a given chunk start."""

    name = "test_explode"
    description = "raises at a frame"
    params = (Param(name="at", default=0, min=0, max=1e9),)

    def process(self, block: Block) -> Block:
        if block.start <= self.options["at"] < block.start + len(block.samples):
            raise RuntimeError("boom on purpose")
        return block


class Count(Step):
    """A test step that counts the chunks it processed, and blocks until released."""

    name = "test_count"
    description = "counts chunks"
    processed = 0
    gate = threading.Event()
    counted = threading.Condition()

    def process(self, block: Block) -> Block:
        with Count.counted:
            Count.processed += 1
            Count.counted.notify_all()
        Count.gate.wait(30)
        return block

    @classmethod
    def wait_for(cls, count: int) -> None:
        with cls.counted:
            assert cls.counted.wait_for(lambda: cls.processed >= count, timeout=30)


TEST_STEPS = (Jitter, Explode, Count)
for _step in TEST_STEPS:
    Step.registry.pop(_step.name)


def launch_nginx(binary: str, folder: Path, server_config: str) -> subprocess.Popen[bytes]:
    """Run nginx in the foreground with its files in folder and server_config as its http body.

    Its error log is folder / "error.log".
    """
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{\n    access_log off;\n{temp}\n{server_config}}}\n"
    )
    log = folder / "error.log"
    return subprocess.Popen(
        [binary, "-e", str(log), "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
