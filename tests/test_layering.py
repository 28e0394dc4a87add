"""The audio code and the engine's exceptions know nothing of Flask or Werkzeug."""

from __future__ import annotations

import subprocess
import sys

FLASK_FREE = [
    "audioserver.exceptions",
    "audioserver.audio.decode",
    "audioserver.audio.chunking",
    "audioserver.audio.pipeline",
    "audioserver.audio.meter",
    "audioserver.audio.analysis",
    "audioserver.audio.encoders",
    "audioserver.segments",
]


def test_the_audio_package_imports_nothing_of_flask_or_werkzeug():
    code = (
        "import importlib, sys\n"
        f"for name in {FLASK_FREE!r}: importlib.import_module(name)\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug',"
        " 'flask_socketio', 'socketio', 'engineio'))\n"
        "print(','.join(web))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
