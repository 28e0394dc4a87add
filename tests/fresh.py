"""A fresh checkout and fresh virtual environments, for the packaging and fresh-clone tests.

The checkout holds the files a clone of the working tree would: the tracked
files and the new ones git does not ignore, as they are on disk (so a test
sees uncommitted changes too), and nothing ignored: no .venv, no
node_modules, no static/vendor. Environments are made without pip; the test
environment's pip installs into them (``--python``), which is three times
faster than seeding each with its own pip and compiling all of scipy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent

# A fresh environment's modules are compiled when first imported (pip's --no-compile
# would otherwise compile all of scipy); let the commands keep what they compile.
ENVIRONMENT = {
    name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"
}


def checkout(target: Path) -> Path:
    """Copy the project's files as a clone of the working tree has them into target."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # tracked files deleted in the working tree are not copied
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def new_environment(path: Path) -> Path:
    """A new virtual environment at path, without pip."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    return path


def pip_install(environment: Path, *arguments: Any, cwd: Path, timeout: float = 600) -> None:
    """``pip install ARGUMENTS`` into the environment."""
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", environment / "bin" / "python", "install",
         "--quiet", "--no-compile", *arguments],
        check=True, cwd=cwd, timeout=timeout,
    )  # fmt: skip


class ProgramServer(ServerProcess):
    """A server started by a given command line, in a given folder and environment."""

    def __init__(
        self, program: list[Any], *, cwd: Path, env: dict[str, str], log: Path, **settings: Any
    ) -> None:
        self._program = [str(part) for part in program]
        self._options = {"cwd": cwd, "env": env}
        super().__init__(cwd / "data", log=log, **settings)

    def program(self) -> list[str]:
        return self._program

    def popen_options(self) -> dict[str, Any]:
        return self._options

    def log_lines(self, level: str) -> list[str]:
        """The server's own log lines at a level (``WARNING``, ``ERROR``).

        Only the audioserver loggers': run without a terminal, Flask-SocketIO warns
        that Werkzeug looks like a production deployment.
        """
        text = self.log.read_text(errors="replace") if self.log else ""
        return [
            line for line in text.splitlines() if f" {level} " in line and "] audioserver" in line
        ]
