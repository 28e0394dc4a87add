"""``pip install .`` into a fresh virtual environment gives working commands and a whole server.

The project is copied first (the files an install reads), because pip builds
in the source folder (``build/``, ``*.egg-info``) and the checkout must stay
clean. The commands then run from outside the checkout, so nothing can come
from it: the templates and static files must be in the installed package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import ServerProcess, music, write_wav

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

# The fresh environment's modules are compiled when first imported (pip's --no-compile
# would otherwise compile all of scipy); let the commands keep what they compile.
ENVIRONMENT = {
    name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"
}


def copy_project(target: Path) -> Path:
    """Copy what ``pip install .`` reads: pyproject.toml, README.md and the package."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(
        ROOT / "audioserver",
        target / "audioserver",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"),
    )
    return target


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A new virtual environment with the project installed (not editable) from a copy.

    The test environment's pip installs into it (``--python``): seeding the new
    one with its own pip, and compiling every module of scipy and numba to
    bytecode ahead of time, would take three times as long.
    """
    root = tmp_path_factory.mktemp("packaging")
    source = copy_project(root / "source")
    environment = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", environment], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", environment / "bin" / "python", "install",
         "--quiet", "--no-compile", source],
        check=True, cwd=root, timeout=300,
    )  # fmt: skip
    return environment


def run(command: list, *, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=ENVIRONMENT,
    )  # fmt: skip


def test_the_package_and_its_data_are_installed(venv):
    (package,) = venv.glob("lib/python3*/site-packages/audioserver")
    for name in ("server.py", "client/cli.py", "templates/index.html", "static/style.css",
                 "static/vendor/socket.io.min.js"):  # fmt: skip
        assert (package / name).is_file(), name


def test_both_commands_answer_help(venv, tmp_path):
    server = run([venv / "bin" / "audio-server", "--help"], cwd=tmp_path)
    assert server.returncode == 0, server.stderr
    assert "--port" in server.stdout and "AUDIO_WORKERS" in server.stdout
    client = run([venv / "bin" / "audio-client", "--help"], cwd=tmp_path)
    assert client.returncode == 0, client.stderr
    for command in ("process", "status", "stop", "result", "steps"):
        assert command in client.stdout


class InstalledServer(ServerProcess):
    """audio-server from the fresh environment, run from a folder outside the project."""

    def __init__(self, venv: Path, folder: Path) -> None:
        self.venv, self.folder = venv, folder
        super().__init__(folder / "data", log=folder / "server.log", workers=1)

    def program(self) -> list[str]:
        return [str(self.venv / "bin" / "audio-server")]

    def popen_options(self) -> dict[str, Any]:
        return {"cwd": self.folder, "env": ENVIRONMENT}


@pytest.fixture(scope="module")
def installed_server(venv, tmp_path_factory) -> Iterator[str]:
    """The installed audio-server on a free port; its URL once it answers."""
    with InstalledServer(venv, tmp_path_factory.mktemp("installed-server")) as server:
        yield server.url


def test_the_installed_server_serves_the_page_and_its_files(installed_server):
    health = requests.get(f"{installed_server}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["workers"] == 1
    page = requests.get(installed_server, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert "/static/vendor/socket.io.min.js" in assets
    for asset in assets:
        response = requests.get(installed_server + asset, timeout=10)
        assert response.status_code == 200 and response.content, asset


def test_the_installed_client_processes_a_file_on_the_installed_server(
    venv, installed_server, tmp_path
):
    song = write_wav(tmp_path / "song.wav", music(2.0), 44100)
    done = run(
        [venv / "bin" / "audio-client", "process", song, "--format", "flac",
         "--server", installed_server],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "song.wav -> " in done.stdout and "LUFS" in done.stdout
    assert (tmp_path / "song_processed.flac").read_bytes()[:4] == b"fLaC"
