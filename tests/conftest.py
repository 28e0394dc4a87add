"""Fixtures: the app, its test client, a live server, live Socket.IO clients, generated audio."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import TEST_STEPS, Count, Listener, LiveServer, encode, music

from audioserver import create_app
from audioserver.audio.ffmpeg import find_ffmpeg
from audioserver.audio.steps import Step


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return find_ffmpeg()


def _test_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config = {
        "DATA_DIR": str(tmp_path / "data"),
        "WORKERS": 2,
        "MAX_ACTIVE_TASKS": 4,
        "MAX_QUEUED_TASKS": 8,
        "DECODE_STALL_SECONDS": 10.0,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Build apps with test settings (keyword arguments override them); shut them down after."""
    apps = []

    def make(**overrides: Any):
        app = create_app(_test_config(tmp_path, **overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["audio_engine"].shutdown()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_server(make_app) -> Iterator[Callable[..., LiveServer]]:
    """Start live servers on free ports (keyword arguments are settings); stop them after."""
    servers = []

    def start(**overrides: Any) -> LiveServer:
        server = LiveServer(make_app(**overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def live_server(make_server) -> LiveServer:
    return make_server()


@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    """Connect real Socket.IO clients (over WebSocket); disconnect them after."""
    listeners = []

    def connect(url: str, **options: Any) -> Listener:
        listener = Listener(url, **options)
        listeners.append(listener)
        return listener

    yield connect
    for listener in listeners:
        listener.close()


@pytest.fixture
def audio_file(tmp_path: Path) -> Callable[..., Path]:
    """Make an audio file: make(seconds, format="wav", rate=44100, channels=2, signal=None)."""
    counter = iter(range(10_000))

    def make(
        seconds: float = 3.0,
        fmt: str = "wav",
        *,
        rate: int = 44100,
        channels: int = 2,
        signal: np.ndarray | None = None,
    ) -> Path:
        samples = music(seconds, rate=rate, channels=channels) if signal is None else signal
        return encode(samples, rate, tmp_path / f"audio-{next(counter)}.{fmt}")

    return make


@pytest.fixture
def test_steps() -> Iterator[None]:
    """Register the test-only steps (test_jitter, test_explode, test_count) for one test."""
    for step in TEST_STEPS:
        Step.registry[step.name] = step
    Count.processed = 0
    Count.gate = threading.Event()
    yield
    Count.gate.set()
    for step in TEST_STEPS:
        Step.registry.pop(step.name, None)
