"""The page's files: top-level folders in a checkout, and its npm files found or fetched.

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
from audioserver.page import PEAKS, SOCKETIO_CLIENT, VENDOR, VendorFiles

ROOT = Path(__file__).resolve().parent.parent
NPM = shutil.which("npm")
needs_npm = pytest.mark.skipif(NPM is None, reason="npm is not installed")


def project_root(folder: Path) -> Path:
    """A folder laid out as the project's page: static/ without its npm files, and package*.json."""
    (folder / "static").mkdir(parents=True)
    for name in page.NPM_FILES:
        shutil.copyfile(ROOT / name, folder / name)
    return folder


def is_socketio_client(path: Path) -> bool:
    version = page.locked_version(ROOT)
    return path.read_bytes().startswith(f"/*!\n * Socket.IO v{version}".encode())


def is_peaks(path: Path) -> bool:
    """peaks.js's own bundle: a UMD module that defines window.peaks, with nothing to require."""
    text = path.read_text(encoding="utf-8")
    return text.startswith("!function(") and ").peaks=" in text[:600] and "require(" not in text


def warnings_of(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == page.__name__ and r.levelno >= logging.WARNING]


def test_a_checkout_serves_the_top_level_templates_and_static_folders(app, client):
    assert page.page_root() == ROOT
    assert Path(app.template_folder) == ROOT / "templates"
    assert Path(app.static_folder) == ROOT / "static"
    html = client.get("/").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert "/static/style.css" in assets
    assert {f"/static/{name}" for name in VENDOR} <= set(assets)
    for name in [*assets, "/static/format.js", "/static/pipeline.js"]:
        response = client.get(name)
        assert response.status_code == 200, name
        response.close()


@needs_npm
def test_missing_npm_files_are_fetched_with_npm_then_found_in_the_cache(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=page.__name__)
    root, cache = project_root(tmp_path / "project"), tmp_path / "cache"
    first = VendorFiles(root=root, cache=cache, npm="npm")
    first.start()
    fetched = {name: first.path(name) for name in VENDOR}
    assert all(path is not None and path.parent == cache for path in fetched.values())
    assert is_socketio_client(fetched[SOCKETIO_CLIENT]) and is_peaks(fetched[PEAKS])
    assert fetched[PEAKS].name == f"peaks-{page.locked_version(ROOT, 'peaks.js')}.min.js"
    # Nothing else: no scratch folder left.
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in fetched.values())
    assert any("fetched the page's Socket.IO client and peaks.js" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert warnings_of(caplog) == []

    caplog.clear()
    again = VendorFiles(root=root, cache=cache, npm="none")  # a second start: no npm needed
    again.start()
    assert {name: again.path(name) for name in VENDOR} == fetched
    assert caplog.records == []


@needs_npm
def test_two_servers_fetching_at_once_both_get_the_whole_files(tmp_path, caplog):
    root, cache = project_root(tmp_path / "project"), tmp_path / "cache"
    clients = [VendorFiles(root=root, cache=cache, npm="npm") for _ in range(2)]
    starting = [threading.Thread(target=client.start) for client in clients]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    for name, whole in ((SOCKETIO_CLIENT, is_socketio_client), (PEAKS, is_peaks)):
        paths = [client.path(name) for client in clients]
        assert paths[0] is not None and paths[0] == paths[1] and whole(paths[0])
    assert len(list(cache.iterdir())) == len(VENDOR)
    assert warnings_of(caplog) == []


def test_only_the_file_static_lacks_is_fetched(tmp_path, caplog):
    """A checkout set up before peaks.js was a dependency: the client is there, peaks.js not."""
    root = project_root(tmp_path / "project")
    (root / "static" / "vendor").mkdir()
    (root / "static" / SOCKETIO_CLIENT).write_bytes(b"/* the client */")
    files = VendorFiles(root=root, cache=tmp_path / "cache", npm="none")
    files.start()
    assert files.path(SOCKETIO_CLIENT) == root / "static" / SOCKETIO_CLIENT
    assert files.path(PEAKS) is None
    (warning,) = warnings_of(caplog)
    message = warning.getMessage()
    assert "peaks.js (static/vendor/peaks.min.js) is missing" in message
    assert "Socket.IO" not in message and "zoomable waveform" in message


def test_the_files_in_static_are_served_as_they_are(tmp_path, caplog):
    root = project_root(tmp_path / "project")
    (root / "static" / "vendor").mkdir()
    for name in VENDOR:
        (root / "static" / name).write_bytes(b"/* the file */")
    files = VendorFiles(root=root, cache=tmp_path / "cache", npm="npm")
    files.start()
    assert {name: files.path(name) for name in VENDOR} == {
        name: root / "static" / name for name in VENDOR
    }
    assert not (tmp_path / "cache").exists() and caplog.records == []


@pytest.mark.parametrize("npm", ["none", "no-such-npm"])
def test_without_npm_one_warning_line_says_how_to_fix_it(tmp_path, caplog, npm):
    files = VendorFiles(root=project_root(tmp_path / "project"), cache=tmp_path / "c", npm=npm)
    files.start()
    assert [files.path(name) for name in VENDOR] == [None, None]
    (warning,) = warnings_of(caplog)
    message = warning.getMessage()
    assert "\n" not in message and "HTTP polling" in message and "install Node.js" in message
    assert "Socket.IO client" in message and "peaks.js" in message
    assert ("switched off" if npm == "none" else "not found") in message


@needs_npm
def test_a_failing_npm_is_one_warning_with_its_reason(tmp_path, caplog):
    root = project_root(tmp_path / "project")
    (root / "package.json").write_text('{"name": "x", "dependencies": {"left-pad": "1.3.0"}}')
    files = VendorFiles(root=root, cache=tmp_path / "cache", npm="npm")
    files.start()
    assert files.path() is None  # npm ci refuses a lock file out of step with package.json
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
    VendorFiles(root=tmp_path, cache=cache, npm="npm")._remove_stale_scratch()
    assert not old.exists() and recent.exists()


def test_the_missing_client_is_a_json_404_and_other_files_are_served(tmp_path):
    root = project_root(tmp_path / "project")
    (root / "static" / "style.css").write_text("body {}")
    app = Flask(__name__, static_folder=root / "static")
    errors.init_app(app)
    page.init_app(app, VendorFiles(root=root, cache=tmp_path / "cache", npm="none"))
    with app.test_client() as client:
        for name in VENDOR:
            missing = client.get(f"/static/{name}")
            assert missing.status_code == 404
            assert "install Node.js" in missing.get_json()["message"]
        style = client.get("/static/style.css")
        assert style.status_code == 200 and style.data == b"body {}"
        style.close()
