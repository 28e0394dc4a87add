"""A fresh clone, only the seed's two commands, and the whole page in Chromium over a WebSocket.

``pip install -r requirements.txt`` into a fresh virtual environment, then
``python app.py`` in the clone, as a newcomer does: no scripts/setup.sh, so
no static/vendor and no node_modules. The server fetches the Socket.IO client
with npm at its first start (into an empty cache folder here); the page must
load every script and style sheet it names and connect its socket over the
websocket transport. A second start finds the client in the cache. Without
npm, one warning line says how to fix it, and the page still does its job
over HTTP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests
from fresh import ENVIRONMENT, ProgramServer, checkout, new_environment, pip_install
from helpers import music, write_wav

from audioserver.page import SOCKETIO_CLIENT, locked_version

try:
    from playwright.sync_api import Page, expect
except ImportError:
    if os.environ.get("CI", "").lower() in ("true", "1"):
        raise  # CI runs the browser tests: without playwright they fail, never skip
    pytest.skip("playwright is not installed (requirements-dev.txt)", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Every file the page names, as the browser resolved it.
NAMED_FILES = """() => [...document.querySelectorAll("script[src], link[rel=stylesheet]")]
    .map((element) => element.src || element.href)"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The project as a fresh clone has it."""
    clone = checkout(tmp_path_factory.mktemp("fresh-clone") / "audioserver")
    assert not (clone / "static" / "vendor").exists() and not (clone / "node_modules").exists()
    return clone


@pytest.fixture(scope="module")
def python(clone, tmp_path_factory) -> Path:
    """A fresh virtual environment after ``pip install -r requirements.txt`` in the clone."""
    environment = new_environment(tmp_path_factory.mktemp("fresh-venv") / "venv")
    pip_install(environment, "-r", "requirements.txt", cwd=clone)
    return environment / "bin" / "python"


def app_py(python: Path, clone: Path, cache: Path, log: Path, **settings: Any) -> ProgramServer:
    """``python app.py`` in the clone, with its cache folder (XDG_CACHE_HOME) at cache."""
    environment = {**ENVIRONMENT, "XDG_CACHE_HOME": str(cache)}
    return ProgramServer(
        [python, "app.py"], cwd=clone, env=environment, log=log, log_level="INFO", workers=1,
        **settings,
    )  # fmt: skip


def failed_responses(page: Page) -> list[str]:
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else 0)
    page.on("requestfailed", lambda request: failures.append(f"failed {request.url}"))
    return failures


def test_the_seeds_two_commands_serve_the_whole_page_with_a_live_websocket(
    page: Page, clone, python, tmp_path
):
    cache = tmp_path / "cache"
    failures = failed_responses(page)
    loaded: dict[str, int] = {}
    page.on("response", lambda response: loaded.setdefault(response.url, response.status))
    with app_py(python, clone, cache, tmp_path / "first.log") as server:
        page.goto(server.url)
        page.wait_for_function(
            """() => window.audioPage && audioPage.status.phase === "idle"
                && audioPage.status.connected
                && audioPage.socket.io.engine.transport.name === "websocket" """
        )
        named = page.evaluate(NAMED_FILES)
        assert f"{server.url}/static/{SOCKETIO_CLIENT}" in named
        for url in named:
            assert loaded.get(url) == 200, url
        assert failures == []
        expect(page.locator("#connection-text")).to_have_text("Live")
        assert server.log_lines("WARNING") == [] and server.log_lines("ERROR") == []
    assert (cache / "audioserver" / f"socket.io-{locked_version(clone)}.min.js").is_file()

    # A second start finds the client in the cache: no npm needed, nothing to wait for.
    with app_py(python, clone, cache, tmp_path / "second.log", npm="none") as server:
        client = requests.get(f"{server.url}/static/{SOCKETIO_CLIENT}", timeout=10)
        assert client.status_code == 200 and client.content.startswith(b"/*!\n * Socket.IO")
        assert server.log_lines("WARNING") == []


def test_without_npm_the_server_says_so_and_the_page_works_over_http(
    page: Page, clone, python, tmp_path
):
    song = write_wav(tmp_path / "song.wav", music(3.0), 44100)
    with app_py(python, clone, tmp_path / "cache", tmp_path / "server.log", npm="none") as server:
        (warning,) = server.log_lines("WARNING")
        assert "Socket.IO client" in warning and "install Node.js" in warning
        missing = requests.get(f"{server.url}/static/{SOCKETIO_CLIENT}", timeout=10)
        assert missing.status_code == 404 and "install Node.js" in missing.json()["message"]

        page.goto(server.url)
        page.wait_for_function("() => window.audioPage && audioPage.status.phase === 'idle'")
        expect(page.locator("#connection-text")).to_contain_text("No live channel")
        page.set_input_files("#file", str(song))
        page.get_by_role("button", name="Process").click()
        page.wait_for_function("() => audioPage.status.phase === 'complete'", timeout=60_000)
        expect(page.locator("#download")).to_be_visible()
        assert len(server.log_lines("WARNING")) == 1
