"""Fresh installs: the server's wheel is a whole server, and the client's installs alone.

The wheels are built from a copy of the project as a clone has it (no
static/vendor, no node_modules), the way ``pip install .`` and ``pip install
./client`` build them, and each goes into a fresh virtual environment of its
own. The commands then run from outside the checkout, so nothing can come
from it: the page's template, every static file and its npm files (the
Socket.IO client and peaks.js) must be in the installed package. The
installed server runs with npm switched off and an empty cache, so the npm
files it serves can only be the wheel's. The server's environment must hold
none of the client's libraries, and the client's none of the server's
numeric stack.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fresh import ENVIRONMENT, ROOT, ProgramServer, checkout, new_environment, pip_install
from helpers import music, write_wav

from audioserver.page import NPM_FILES, PEAKS, SOCKETIO_CLIENT, VENDOR, VendorFiles

pytestmark = pytest.mark.slow

PAGE_FILES = sorted(
    path.relative_to(ROOT).as_posix()
    for folder in ("templates", "static")
    for path in (ROOT / folder).rglob("*")
    if path.is_file() and "vendor" not in path.parts
)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A fresh checkout of the project (the working tree stays clean)."""
    source = checkout(tmp_path_factory.mktemp("checkout") / "source")
    assert not (source / "static" / SOCKETIO_CLIENT).exists()
    return source


def build_wheel(project: Path, dist: Path) -> Path:
    """The wheel ``pip wheel`` builds from a project folder."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist,
         project],
        check=True, cwd=dist.parent, timeout=300,
    )  # fmt: skip
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    """The server's wheel, as ``pip install .`` builds it."""
    built = build_wheel(source, tmp_path_factory.mktemp("wheel") / "dist")
    assert built.name.startswith("audioserver-0")
    return built


@pytest.fixture(scope="module")
def client_wheel(source, tmp_path_factory) -> Path:
    """The client's wheel, as ``pip install ./client`` builds it."""
    built = build_wheel(source / "client", tmp_path_factory.mktemp("client-wheel") / "dist")
    assert built.name.startswith("audioserver_client-")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the server's wheel installed."""
    environment = new_environment(tmp_path_factory.mktemp("packaging") / "venv")
    pip_install(environment, wheel, cwd=wheel.parent)
    return environment


@pytest.fixture(scope="module")
def client_venv(client_wheel, tmp_path_factory) -> Path:
    """A new virtual environment with only the client's wheel installed."""
    environment = new_environment(tmp_path_factory.mktemp("client-packaging") / "venv")
    pip_install(environment, client_wheel, cwd=client_wheel.parent)
    return environment


def installed(environment: Path, tmp_path: Path) -> set[str]:
    """The names of the distributions installed in an environment (lower case)."""
    listing = run(
        [environment / "bin" / "python", "-c",
         "import importlib.metadata as m; print(*{d.metadata['Name'] for d in m.distributions()})"],
        cwd=tmp_path,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    return {name.lower().replace("_", "-") for name in listing.stdout.split()}


def imports(environment: Path, module: str, tmp_path: Path) -> bool:
    """Whether ``import module`` works in an environment (run outside the checkout)."""
    return (
        run([environment / "bin" / "python", "-c", f"import {module}"], cwd=tmp_path).returncode
        == 0
    )


def run(command: list, *, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=ENVIRONMENT,
    )  # fmt: skip


def test_the_page_is_at_the_top_level_of_the_repository():
    for name in ("app.py", "templates/index.html", "static/app.js", "static/style.css",
                 "requirements.txt", "tests", "README.md"):  # fmt: skip
        assert (ROOT / name).exists(), name
    assert not (ROOT / "audioserver" / "templates").exists()
    assert not (ROOT / "audioserver" / "static").exists()


def test_the_wheel_holds_the_page_its_npm_files_the_socketio_client_and_peaks(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in [*PAGE_FILES, *NPM_FILES, *(f"static/{name}" for name in VENDOR)]:
        assert f"audioserver/web/{name}" in names, name
    assert "audioserver/server.py" in names and "audioserver/local.py" in names
    assert not [name for name in names if name.startswith(("audioserver/client/", "audioclient/"))]
    assert not [name for name in names if name.startswith(("templates/", "static/"))]
    client = zipfile.ZipFile(wheel).read(f"audioserver/web/static/{SOCKETIO_CLIENT}")
    assert client.startswith(b"/*!\n * Socket.IO v4.")
    peaks = zipfile.ZipFile(wheel).read(f"audioserver/web/static/{PEAKS}")
    assert b").peaks=" in peaks[:600] and b"require(" not in peaks


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_a_wheel_built_without_npm_fetches_its_npm_files_from_its_own_package_files(
    wheel, tmp_path
):
    """The wheel's page without its npm files, as a build without npm makes it: fetched at start."""
    vendored = tuple(f"static/{name}" for name in VENDOR)
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("audioserver/web/") and not name.endswith(vendored):
                archive.extract(name, tmp_path)
    files = VendorFiles(root=tmp_path / "audioserver" / "web", cache=tmp_path / "cache", npm="npm")
    files.start()
    for name in VENDOR:
        fetched = files.path(name)
        assert fetched is not None and fetched.is_relative_to(tmp_path / "cache")
        assert fetched.read_bytes() == zipfile.ZipFile(wheel).read(f"audioserver/web/static/{name}")


def test_the_server_installs_without_the_clients_libraries(venv, tmp_path):
    server = run([venv / "bin" / "audio-server", "--help"], cwd=tmp_path)
    assert server.returncode == 0, server.stderr
    assert "--port" in server.stdout and "AUDIO_WORKERS" in server.stdout
    names = installed(venv, tmp_path)
    assert {"audioserver", "flask", "numpy", "scipy", "numba"} <= names
    client_libraries = {"audioserver-client", "requests", "requests-toolbelt", "tqdm",
                        "websocket-client"}  # fmt: skip
    assert not names & client_libraries
    assert not (venv / "bin" / "audio-client").exists()
    assert not imports(venv, "audioclient", tmp_path)


def test_the_client_installs_alone_without_the_numeric_stack(client_venv, tmp_path):
    client = run([client_venv / "bin" / "audio-client", "--help"], cwd=tmp_path)
    assert client.returncode == 0, client.stderr
    for command in ("process", "status", "stop", "result", "steps"):
        assert command in client.stdout
    names = installed(client_venv, tmp_path)
    assert {"audioserver-client", "requests", "requests-toolbelt", "tqdm"} <= names
    assert not names & {"audioserver", "flask", "numpy", "scipy", "numba", "llvmlite"}
    for module in ("numpy", "scipy", "flask", "audioserver"):
        assert not imports(client_venv, module, tmp_path), module
    assert not (client_venv / "bin" / "audio-server").exists()


def test_the_installed_server_processes_files_without_a_server(venv, tmp_path):
    song = write_wav(tmp_path / "song.wav", music(2.0), 44100)
    done = run(
        [venv / "bin" / "audio-server", "process", song, "--pipeline", "loudness=target=-16",
         "--format", "flac"],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "song.wav -> " in done.stdout and "-16.0 LUFS" in done.stdout
    assert (tmp_path / "song_processed.flac").read_bytes()[:4] == b"fLaC"


@pytest.fixture(scope="module")
def installed_server(venv, tmp_path_factory) -> Iterator[ProgramServer]:
    """The installed audio-server on a free port, run outside the project, npm switched off."""
    folder = tmp_path_factory.mktemp("installed-server")
    environment = {**ENVIRONMENT, "XDG_CACHE_HOME": str(folder / "cache")}
    with ProgramServer(
        [venv / "bin" / "audio-server"], cwd=folder, env=environment, log=folder / "server.log",
        workers=1, npm="none",
    ) as server:  # fmt: skip
        yield server


def test_the_installed_server_serves_the_page_and_every_file_it_names(installed_server):
    url = installed_server.url
    health = requests.get(f"{url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["workers"] == 1
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert f"/static/{SOCKETIO_CLIENT}" in assets and "/static/style.css" in assets
    assert f"/static/{PEAKS}" in assets
    for asset in assets:
        response = requests.get(url + asset, timeout=10)
        assert response.status_code == 200 and response.content, asset
    for name in PAGE_FILES:  # the modules app.js imports too
        if name.startswith("static/"):
            response = requests.get(f"{url}/{name}", timeout=10)
            assert response.status_code == 200, name
            assert response.content == (ROOT / name).read_bytes(), name
    client = requests.get(f"{url}/static/{SOCKETIO_CLIENT}", timeout=10)
    assert client.headers["Content-Type"].startswith("text/javascript")
    assert client.content.startswith(b"/*!\n * Socket.IO v4.")
    assert installed_server.log_lines("WARNING") == []


def test_the_installed_client_processes_a_file_on_the_installed_server(
    client_venv, installed_server, tmp_path
):
    song = write_wav(tmp_path / "song.wav", music(2.0), 44100)
    done = run(
        [client_venv / "bin" / "audio-client", "process", song, "--format", "flac",
         "--server", installed_server.url],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "song.wav -> " in done.stdout and "LUFS" in done.stdout
    assert (tmp_path / "song_processed.flac").read_bytes()[:4] == b"fLaC"
