"""The page's files: its template, its static files, and the two it takes from npm.

In a checkout they are the top-level ``templates/`` and ``static/``, next to
``app.py``. An installed server has no checkout, so the wheel carries them
inside the package, as ``audioserver/web/`` (``setup.py`` puts them there);
``page_root()`` finds whichever is there.

Two of the page's scripts are npm packages, never copied into the repository
(``VENDOR``): the Socket.IO client (``static/vendor/socket.io.min.js``) and
peaks.js (``static/vendor/peaks.min.js``, its self-contained bundle, with
Konva and waveform-data inside). The server serves each, in this order:

1. from ``static/vendor/`` when it is there: ``scripts/setup.sh`` copies it
   there, and a wheel built where npm is has it;
2. the copy fetched earlier into the cache folder
   (``$XDG_CACHE_HOME/audioserver``, by default ``~/.cache/audioserver``);
3. otherwise it fetches what is missing at start-up: one ``npm ci`` with the
   project's ``package.json`` and ``package-lock.json`` (so the locked
   versions) in a scratch folder of the cache, in a background thread, so the
   server answers meanwhile; a request for a file waits for it (30 s at most).
   Each file then goes into the cache in one atomic rename, so two servers
   starting at once cannot see half a file, and later starts find it there.

Without npm, or if npm fails, one WARNING line at start-up says so and how to
fix it; the page then works over HTTP polling, without the live stream (and
shows a finished task's result without the zoomable waveform).

This module uses only the standard library at import: ``setup.py`` runs it to
fetch the files into the wheel at build time.
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
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from collections.abc import Callable

    from flask import Flask, Response

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "web"  # where a wheel puts the page (see setup.py)
NPM_FILES = ("package.json", "package-lock.json")
SOCKETIO_CLIENT = "vendor/socket.io.min.js"  # under static/, as the page names it
PEAKS = "vendor/peaks.min.js"
# Each file the page takes from npm: its npm package, the file in that package, and what it
# is called in messages.
VENDOR = {
    SOCKETIO_CLIENT: ("socket.io-client", "dist/socket.io.min.js", "Socket.IO client"),
    PEAKS: ("peaks.js", "dist/peaks.min.js", "peaks.js"),
}
WITHOUT = {  # what the page does without each
    SOCKETIO_CLIENT: "over HTTP polling, without the live stream",
    PEAKS: "without the zoomable waveform of a result",
}
NPM_TIMEOUT = 90.0  # seconds npm may take
REQUEST_WAIT = 30.0  # seconds a request for a file waits for npm, at most (then 404)
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


def locked_version(root: Path, package: str = VENDOR[SOCKETIO_CLIENT][0]) -> str:
    """The version of an npm package (by default socket.io-client) that root's lock pins."""
    lock = json.loads((root / "package-lock.json").read_text(encoding="utf-8"))
    version: str = lock["packages"][f"node_modules/{package}"]["version"]
    return version


def cached_name(name: str, version: str) -> str:
    """A vendor file's name in the cache, with its version: socket.io-4.8.1.min.js."""
    base = Path(name).name
    stem = base.removesuffix(".min.js")
    return f"{stem}-{version}.min.js" if stem != base else f"{version}-{base}"


def fetch_vendor(
    npm: str, *, root: Path, targets: dict[str, Path], timeout: float = NPM_TIMEOUT
) -> dict[str, Path]:
    """Fetch vendor files (names of ``VENDOR``) with one ``npm ci`` from root's package files.

    npm runs in a scratch folder next to the first target, and each file
    reaches its target by one rename: whoever reads a target sees all of it or
    nothing. Raises ``subprocess.CalledProcessError`` / ``TimeoutExpired`` /
    ``OSError`` when npm fails.
    """
    first = next(iter(targets.values()))
    first.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=first.parent, prefix=".npm-") as scratch:
        for name in NPM_FILES:
            shutil.copyfile(root / name, Path(scratch) / name)
        subprocess.run(
            [npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
             "--loglevel=error"],
            cwd=scratch, check=True, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        for name, target in targets.items():
            package, dist, _ = VENDOR[name]
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = Path(scratch) / f"staged-{target.name}"
            shutil.copyfile(Path(scratch) / "node_modules" / package / dist, staged)
            os.replace(staged, target)
    return targets


def npm_failure(error: BaseException) -> str:
    """npm's own last words about a failure, on one line."""
    if isinstance(error, subprocess.CalledProcessError):
        lines = [line for line in (error.stderr or "").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"npm exited with {error.returncode}"
    if isinstance(error, subprocess.TimeoutExpired):
        return f"npm took more than {error.timeout:g} s"
    return str(error)


class VendorFiles:
    """The page's files from npm (``VENDOR``): found in the static folder or the cache, or fetched.

    ``start()`` looks for each and, when some are nowhere, starts fetching
    them in a thread of its own (the one thread outside the task engine: npm
    takes seconds, and the server must answer meanwhile). ``path(name)`` gives
    a file, waiting for a fetch under way.
    """

    def __init__(self, *, root: Path, cache: Path, npm: str) -> None:
        self.root = root
        self.cache = cache
        self.npm = npm
        self._static = root / "static"
        self._cached: dict[str, Path] = {}
        self._fetching: threading.Thread | None = None

    def start(self) -> None:
        """Find the files, or start fetching the missing ones; say once what the page lacks."""
        missing = [name for name in VENDOR if not (self._static / name).is_file()]
        if not missing:
            return
        try:
            versions = {name: locked_version(self.root, VENDOR[name][0]) for name in missing}
        except (OSError, ValueError, KeyError) as error:
            self._missing(missing, f"({error})")
            return
        self._cached = {
            name: self.cache / cached_name(name, version) for name, version in versions.items()
        }
        to_fetch = {name: path for name, path in self._cached.items() if not path.is_file()}
        if not to_fetch:
            logger.debug("the page's npm files: %s", sorted(map(str, self._cached.values())))
            return
        switched_off = self.npm.lower() in ("", "none")
        npm = None if switched_off else shutil.which(self.npm)
        if npm is None:
            state = "switched off (--npm none)" if switched_off else "not found"
            self._missing(list(to_fetch), f"and npm is {state}")
            return
        self._remove_stale_scratch()
        logger.info(
            "fetching the page's %s with npm into %s",
            " and ".join(f"{VENDOR[name][2]} ({VENDOR[name][0]} {versions[name]})"
                         for name in to_fetch),
            self.cache,
        )  # fmt: skip
        self._fetching = threading.Thread(
            target=self._fetch, args=(npm, to_fetch), name="fetch-npm-files", daemon=True
        )
        self._fetching.start()

    @staticmethod
    def _files(names: list[str]) -> str:
        return " and ".join(f"{VENDOR[name][2]} (static/{name})" for name in names)

    @staticmethod
    def _without(names: list[str]) -> str:
        """How the page works without these files."""
        return "the page will work " + ", and ".join(WITHOUT[name] for name in names)

    def _missing(self, names: list[str], why: str) -> None:
        verb = "is" if len(names) == 1 else "are"
        logger.warning(
            "the page's %s %s missing %s: %s; %s",
            self._files(names), verb, why, self._without(names), FIX,
        )  # fmt: skip

    def _fetch(self, npm: str, targets: dict[str, Path]) -> None:
        started = time.perf_counter()
        try:
            fetch_vendor(npm, root=self.root, targets=targets)
        except (OSError, subprocess.SubprocessError) as error:
            logger.warning(
                "could not fetch the page's %s with npm (%s): %s; %s",
                self._files(list(targets)), npm_failure(error), self._without(list(targets)),
                FIX,
            )  # fmt: skip
            return
        logger.info(
            "fetched the page's %s in %.1f s",
            " and ".join(VENDOR[name][2] for name in targets),
            time.perf_counter() - started,
        )

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

    def path(self, name: str = SOCKETIO_CLIENT) -> Path | None:
        """A file's path, once there (waiting for a fetch under way); None without one."""
        bundled = self._static / name
        if bundled.is_file():
            return bundled
        if self._fetching is not None:
            self._fetching.join(REQUEST_WAIT)
        cached = self._cached.get(name)
        if cached is not None and cached.is_file():
            return cached
        return None

    @property
    def fetching(self) -> bool:
        """Whether npm is still at work."""
        return self._fetching is not None and self._fetching.is_alive()


def init_app(app: Flask, vendor: VendorFiles) -> None:
    """Serve the npm files at /static/vendor/... wherever they are."""
    from flask import send_file

    from .errors import error_response

    # Flask's own static view (send_static_file): it returns a Response, never an awaitable.
    serve_static = cast("Callable[..., Response]", app.view_functions["static"])

    def static(filename: str) -> Response:
        if filename not in VENDOR:
            return serve_static(filename=filename)
        path = vendor.path(filename)
        if path is None:
            reason = (
                "is still being fetched with npm: reload the page in a moment"
                if vendor.fetching
                else f"is not installed on this server: {FIX}"
            )
            return error_response(404, "not_found", f"The page's {VENDOR[filename][2]} {reason}.")
        return send_file(
            path,
            mimetype="text/javascript",
            max_age=app.get_send_file_max_age(filename),
            conditional=True,
        )

    app.view_functions["static"] = static
    app.extensions["vendor_files"] = vendor
    vendor.start()
