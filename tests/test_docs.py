"""The README's tables are the ones the code makes, and its example script works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import read_wav

from audioserver import docs

ROOT = Path(__file__).resolve().parent.parent


def section(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert match, f"README has no {name} section"
    return match.group(1)


def test_readme_lists_the_steps_as_defined():
    assert section("steps") == docs.steps_table()


def test_readme_lists_the_settings_as_defined():
    assert section("settings") == docs.settings_table()


def test_the_example_script_processes_a_file(live_server, audio_file):
    path = audio_file(3.0, "mp3")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "process.py"), str(path), "gain=db=-3",
         live_server.url],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "chunk 2/2: peak" in result.stdout and "done: 3.0 s of audio" in result.stdout
    saved, rate = read_wav(path.with_name(path.stem + "_processed.wav"))
    assert rate == 44100 and len(saved) == 3 * 44100
