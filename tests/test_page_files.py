"""The page's files: top-level folders in a checkout, and the Socket.IO client found or fetched.

Fetching runs the real npm (its cache is warm here) into temporary cache
folders; "no npm" is the ``none`` setting or a name that is not on PATH.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from flask import Flask

from audioserver import errors, page
from audioserver.page import SOCKETIO_CLIENT, SocketIOClient

ROOT = Path(__file__).resolve().parent.parent
NPM = shutil.which("npm")
needs_npm = pytest.mark.skipif(NPM is None, reason="npm is not installed")


def project_root(folder: Path) -> Path:
    """A folder laid out as the project's page: static/ without the client, and the npm files."""
    (folder / "static").mkdir(parents=True)
    for name in page.NPM_FILES:
        shutil.copyfile(ROOT / name, folder / name)
    return folder


def is_socketio_client(path: Path) -> bool:
    version = page.locked_version(ROOT)
    return path.read_bytes().startswith(f"/*!\n * Socket.IO v{version}".encode())


def warnings_of(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == page.__name__ and r.levelno >= logging.WARNING]


def test_a_checkout_serves_the_top_level_templates_and_static_folders(app, client):
    assert page.page_root() == ROOT
    assert Path(app.template_folder) == ROOT / "templates"
    assert Path(app.static_folder) == ROOT / "static"
    html = client.get("/").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert "/static/style.css" in assets and f"/static/{SOCKETIO_CLIENT}" in assets
    for name in [*assets, "/static/format.js", "/static/pipeline.js"]:
        response = client.get(name)
        assert response.status_code == 200, name
        response.close()


@needs_npm
def test_a_missing_client_is_fetched_with_npm_then_found_in_the_cache(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=page.__name__)
    root, cache = project_root(tmp_path / "project"), tmp_path / "cache"
    first = SocketIOClient(root=root, cache=cache, npm="npm")
    first.start()
    fetched = first.path()
    assert fetched is not None and fetched.parent == cache and is_socketio_client(fetched)
    assert [p.name for p in cache.iterdir()] == [fetched.name]  # no scratch folder left
    assert any("fetched the page's Socket.IO client" in r.getMessage() for r in caplog.records)
    assert warnings_of(caplog) == []

    caplog.clear()
    again = SocketIOClient(root=root, cache=cache, npm="none")  # a second start: no npm needed
    again.start()
    assert again.path() == fetched
    assert caplog.records == []


@needs_npm
def test_two_servers_fetching_at_once_both_get_the_whole_file(tmp_path, caplog):
    root, cache = project_root(tmp_path / "project"), tmp_path / "cache"
    clients = [SocketIOClient(root=root, cache=cache, npm="npm") for _ in range(2)]
    starting = [threading.Thread(target=client.start) for client in clients]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    paths = [client.path() for client in clients]
    assert paths[0] is not None and paths[0] == paths[1] and is_socketio_client(paths[0])
    assert [p.name for p in cache.iterdir()] == [paths[0].name]
    assert warnings_of(caplog) == []


def test_the_client_in_static_is_served_as_it_is(tmp_path, caplog):
    root = project_root(tmp_path / "project")
    (root / "static" / "vendor").mkdir()
    bundled = root / "static" / SOCKETIO_CLIENT
    bundled.write_bytes(b"/* the client */")
    client = SocketIOClient(root=root, cache=tmp_path / "cache", npm="npm")
    client.start()
    assert client.path() == bundled
    assert not (tmp_path / "cache").exists() and caplog.records == []


@pytest.mark.parametrize("npm", ["none", "no-such-npm"])
def test_without_npm_one_warning_line_says_how_to_fix_it(tmp_path, caplog, npm):
    client = SocketIOClient(root=project_root(tmp_path / "project"), cache=tmp_path / "c", npm=npm)
    client.start()
    assert client.path() is None
    (warning,) = warnings_of(caplog)
    message = warning.getMessage()
    assert "\n" not in message and "HTTP polling" in message and "install Node.js" in message
    assert ("switched off" if npm == "none" else "not found") in message


@needs_npm
def test_a_failing_npm_is_one_warning_with_its_reason(tmp_path, caplog):
    root = project_root(tmp_path / "project")
    (root / "package.json").write_text('{"name": "x", "dependencies": {"left-pad": "1.3.0"}}')
    client = SocketIOClient(root=root, cache=tmp_path / "cache", npm="npm")
    client.start()
    assert client.path() is None  # npm ci refuses a lock file out of step with package.json
    (warning,) = warnings_of(caplog)
    assert "could not fetch" in warning.getMessage() and "install Node.js" in warning.getMessage()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # the scratch folder is gone


def test_scratch_folders_a_killed_server_left_are_removed(tmp_path):
    cache = tmp_path / "cache"
    old, recent = cache / ".npm-old", cache / ".npm-recent"
    old.mkdir(parents=True)
    recent.mkdir()
    long_ago = time.time() - 2 * page.STALE_SCRATCH
    os.utime(old, (long_ago, long_ago))
    SocketIOClient(root=tmp_path, cache=cache, npm="npm")._remove_stale_scratch()
    assert not old.exists() and recent.exists()


def test_the_missing_client_is_a_json_404_and_other_files_are_served(tmp_path):
    root = project_root(tmp_path / "project")
    (root / "static" / "style.css").write_text("body {}")
    app = Flask(__name__, static_folder=root / "static")
    errors.init_app(app)
    page.init_app(app, SocketIOClient(root=root, cache=tmp_path / "cache", npm="none"))
    with app.test_client() as client:
        missing = client.get(f"/static/{SOCKETIO_CLIENT}")
        assert missing.status_code == 404
        assert "install Node.js" in missing.get_json()["message"]
        style = client.get("/static/style.css")
        assert style.status_code == 200 and style.data == b"body {}"
        style.close()
