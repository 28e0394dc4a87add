"""Answers whose files are closed even when the client goes away in the middle of one.

Werkzeug's own server (``python app.py``, and the tests' live servers) closes
an answer's iterable in a ``finally`` that first drains what is left of the
request from the socket. When the client has reset the connection (a browser
that cancels a media request it no longer needs does, as the page's result
player does after reading what it wants), that drain raises, the close is
skipped, and the result file stays open until the garbage collector finds it
(with a ``ResourceWarning``). Servers that offer ``wsgi.file_wrapper``
(gunicorn) close answers themselves, and get theirs untouched, so they can
still send files with ``sendfile``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.types import StartResponse


class CloseWhenDropped:
    """WSGI middleware: every answer's iterable is closed when the server lets go of it."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        answer = self.app(environ, start_response)
        if "wsgi.file_wrapper" in environ:
            return answer
        return _Closing(answer)


class _Closing:
    """An answer's iterable that closes it once: when asked, or else when it is dropped."""

    def __init__(self, answer: Iterable[bytes]) -> None:
        self._answer = answer
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._answer)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._answer, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        # The server dropped the answer without closing it (see the module's docstring).
        self.close()
