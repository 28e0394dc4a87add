"""The page's files: its template, its static files, and its Socket.IO client.

In a checkout they are the top-level ``templates/`` and ``static/``, next to
``app.py``. An installed server has no checkout, so the wheel carries them
inside the package, as ``audioserver/web/`` (``setup.py`` puts them there);
``page_root()`` finds whichever is there.

The Socket.IO client (``static/vendor/socket.io.min.js``) is an npm package,
never copied into the repository. The server serves, in this order:

1. ``static/vendor/socket.io.min.js`` when it is there: ``scripts/setup.sh``
   copies it there, and a wheel built where npm is has it;
2. the copy fetched earlier into the cache folder
   (``$XDG_CACHE_HOME/audioserver``, by default ``~/.cache/audioserver``);
3. otherwise it fetches it at start-up: ``npm ci`` with the project's
   ``package.json`` and ``package-lock.json`` (so the locked version) in a
   scratch folder of the cache, in a background thread, so the server answers
   meanwhile; a request for the file waits for it (30 s at most). The file then goes into the
   cache in one atomic rename, so two servers starting at once cannot see half
   a file, and later starts find it there.

Without npm, or if npm fails, one WARNING line at start-up says so and how to
fix it; the page then works over HTTP polling, without the live stream.

This module uses only the standard library at import: ``setup.py`` runs it to
fetch the client into the wheel at build time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask, Response

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "web"  # where a wheel puts the page (see setup.py)
NPM_FILES = ("package.json", "package-lock.json")
SOCKETIO_CLIENT = "vendor/socket.io.min.js"  # under static/, as the page names it
NPM_PACKAGE = "socket.io-client"
NPM_DIST = f"node_modules/{NPM_PACKAGE}/dist/socket.io.min.js"
NPM_TIMEOUT = 90.0  # seconds npm may take
REQUEST_WAIT = (
    30.0  # seconds a request for the file waits for npm, at most (then 404: the page polls)
)
STALE_SCRATCH = 3600.0  # a scratch folder this old was left by a server that was killed
FIX = (
    "to fix it, install Node.js (with npm) and restart the server, "
    "or run scripts/setup.sh in a checkout"
)


def page_root() -> Path:
    """The folder of templates/, static/ and the npm files: the package's, else the checkout's."""
    return INSTALLED if (INSTALLED / "templates").is_dir() else PACKAGE.parent


def cache_dir() -> Path:
    """Where fetched copies of the Socket.IO client are kept: $XDG_CACHE_HOME/audioserver."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "audioserver"


def locked_version(root: Path) -> str:
    """The socket.io-client version that root's package-lock.json pins."""
    lock = json.loads((root / "package-lock.json").read_text(encoding="utf-8"))
    return lock["packages"][f"node_modules/{NPM_PACKAGE}"]["version"]


def fetch_client(npm: str, *, root: Path, target: Path, timeout: float = NPM_TIMEOUT) -> Path:
    """Fetch socket.io.min.js with ``npm ci`` from root's package files; put it at target.

    npm runs in a scratch folder next to target, and the file reaches target by
    one rename: whoever reads target sees all of it or nothing. Raises
    ``subprocess.CalledProcessError`` / ``TimeoutExpired`` / ``OSError`` when npm fails.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".npm-") as scratch:
        for name in NPM_FILES:
            shutil.copyfile(root / name, Path(scratch) / name)
        subprocess.run(
            [npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
             "--loglevel=error"],
            cwd=scratch, check=True, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        staged = Path(scratch) / target.name
        shutil.copyfile(Path(scratch) / NPM_DIST, staged)
        os.replace(staged, target)
    return target


def npm_failure(error: BaseException) -> str:
    """npm's own last words about a failure, on one line."""
    if isinstance(error, subprocess.CalledProcessError):
        lines = [line for line in (error.stderr or "").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"npm exited with {error.returncode}"
    if isinstance(error, subprocess.TimeoutExpired):
        return f"npm took more than {error.timeout:g} s"
    return str(error)


class SocketIOClient:
    """The page's Socket.IO client: found in the static folder or the cache, or fetched.

    ``start()`` looks for it and, when it is nowhere, starts fetching it in a
    thread of its own (the one thread outside the task engine: npm takes
    seconds, and the server must answer meanwhile). ``path()`` gives the file,
    waiting for a fetch under way.
    """

    def __init__(self, *, root: Path, cache: Path, npm: str) -> None:
        self.root = root
        self.cache = cache
        self.npm = npm
        self._bundled = root / "static" / SOCKETIO_CLIENT
        self._cached: Path | None = None
        self._fetching: threading.Thread | None = None

    def start(self) -> None:
        """Find the client, or start fetching it; say once if the page will go without it."""
        if self._bundled.is_file():
            return
        try:
            version = locked_version(self.root)
        except (OSError, ValueError, KeyError) as error:
            logger.warning("the page's Socket.IO client is missing (%s); %s", error, FIX)
            return
        self._cached = self.cache / f"socket.io-{version}.min.js"
        if self._cached.is_file():
            logger.debug("the page's Socket.IO client: %s", self._cached)
            return
        switched_off = self.npm.lower() in ("", "none")
        npm = None if switched_off else shutil.which(self.npm)
        if npm is None:
            logger.warning(
                "the page's Socket.IO client (static/%s) is missing and npm is %s: the page "
                "will work over HTTP polling, without the live stream; %s",
                SOCKETIO_CLIENT,
                "switched off (--npm none)" if switched_off else "not found",
                FIX,
            )
            return
        self._remove_stale_scratch()
        logger.info(
            "fetching the page's Socket.IO client (%s %s) with npm into %s",
            NPM_PACKAGE, version, self.cache,
        )  # fmt: skip
        self._fetching = threading.Thread(
            target=self._fetch, args=(npm,), name="fetch-socketio-client", daemon=True
        )
        self._fetching.start()

    def _fetch(self, npm: str) -> None:
        assert self._cached is not None
        started = time.perf_counter()
        try:
            fetch_client(npm, root=self.root, target=self._cached)
        except (OSError, subprocess.SubprocessError) as error:
            logger.warning(
                "could not fetch the page's Socket.IO client with npm (%s): the page will work "
                "over HTTP polling, without the live stream; %s",
                npm_failure(error), FIX,
            )  # fmt: skip
            return
        logger.info("fetched the page's Socket.IO client in %.1f s", time.perf_counter() - started)

    def _remove_stale_scratch(self) -> None:
        """Remove scratch folders that a killed server left behind."""
        if not self.cache.is_dir():
            return
        for scratch in self.cache.glob(".npm-*"):
            try:
                if time.time() - scratch.stat().st_mtime > STALE_SCRATCH:
                    shutil.rmtree(scratch, ignore_errors=True)
            except OSError:
                continue

    def path(self) -> Path | None:
        """The client's file, once there (waiting for a fetch under way); None without one."""
        if self._bundled.is_file():
            return self._bundled
        if self._fetching is not None:
            self._fetching.join(REQUEST_WAIT)
        if self._cached is not None and self._cached.is_file():
            return self._cached
        return None

    @property
    def fetching(self) -> bool:
        """Whether npm is still at work."""
        return self._fetching is not None and self._fetching.is_alive()


def init_app(app: Flask, client: SocketIOClient) -> None:
    """Serve the Socket.IO client at /static/vendor/socket.io.min.js wherever it is."""
    from flask import send_file

    from .errors import error_response

    serve_static = app.view_functions["static"]

    def static(filename: str) -> Response:
        if filename != SOCKETIO_CLIENT:
            return serve_static(filename=filename)
        path = client.path()
        if path is None:
            reason = (
                "is still being fetched with npm: reload the page in a moment"
                if client.fetching
                else f"is not installed on this server: {FIX}"
            )
            return error_response(404, "not_found", f"The page's Socket.IO client {reason}.")
        return send_file(
            path,
            mimetype="text/javascript",
            max_age=app.get_send_file_max_age(filename),
            conditional=True,
        )

    app.view_functions["static"] = static
    app.extensions["socketio_client"] = client
    client.start()
