"""Build step that puts the page into the wheel; everything else is in pyproject.toml.

The page's ``templates/`` and ``static/`` are at the top level of the
repository, where a checkout's server serves them. An installed server has no
checkout, so the wheel carries them inside the package, as
``audioserver/web/``, with ``package.json`` and ``package-lock.json``. When
the page's npm files (``static/vendor/``: the Socket.IO client and peaks.js)
are missing (a fresh clone) and npm is there, the build fetches them into the
wheel; otherwise the installed server fetches them at its first start (see
``audioserver/page.py``). An editable install needs none of this: it serves
the checkout's own folders.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _page_module():
    """audioserver/page.py, loaded alone: the build has no Flask, nor the package installed."""
    spec = importlib.util.spec_from_file_location("_audioserver_page", ROOT / "audioserver/page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithPage(build_py):
    """build_py, then the page's files into audioserver/web/ of the build."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self._copy_page(Path(self.build_lib) / "audioserver" / "web")

    def _copy_page(self, web: Path) -> None:
        page = _page_module()
        shutil.rmtree(web, ignore_errors=True)
        ignore = shutil.ignore_patterns(".*", "__pycache__")
        shutil.copytree(ROOT / "templates", web / "templates", ignore=ignore)
        shutil.copytree(ROOT / "static", web / "static", ignore=ignore)
        for name in page.NPM_FILES:
            shutil.copyfile(ROOT / name, web / name)
        missing = {
            name: web / "static" / name
            for name in page.VENDOR
            if not (web / "static" / name).is_file()
        }
        if not missing:
            return
        npm = shutil.which("npm")
        if npm is None:
            print("npm not found: the wheel goes without the page's npm files (fetched at start)")
            return
        try:
            page.fetch_vendor(npm, root=ROOT, targets=missing)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"the wheel goes without the page's npm files: {page.npm_failure(error)}")


setup(cmdclass={"build_py": BuildWithPage})
