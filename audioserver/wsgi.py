"""The app for WSGI servers: ``gunicorn -c gunicorn.conf.py audioserver.wsgi:app``.

Settings come from the environment (``AUDIO_<NAME>``), as for ``python app.py``.
"""

from __future__ import annotations

from . import create_app

app = create_app()
