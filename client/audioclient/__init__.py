"""Client side: a Socket.IO client that sees the server's events in the order they were sent.

python-engineio's client handles each incoming message on a thread of its
own, so two messages can be handled at the same time: a script may see
``audio_chunk`` 7 before 6, and a binary event's attachments can be matched
with the wrong event. ``InOrderClient`` handles messages one by one in the
read loop instead. Its event handlers must be short and must not wait for an
ack (``call``) themselves.

The ``audio-client`` command (``python -m audioclient``) is built on
it: ``cli`` (the commands), ``job`` (one file), ``connection`` (reconnects and
resubscribes), ``api`` (the HTTP endpoints), ``progress`` (the bars).
"""

from __future__ import annotations

from typing import Any

import engineio
import socketio


# python-engineio and python-socketio have no type hints: their classes are Any to mypy.
class _InOrderEngineIOClient(engineio.Client):  # type: ignore[misc]
    """An Engine.IO client that handles each message in the read loop, in arrival order."""

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "message":
            kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)


class InOrderClient(socketio.Client):  # type: ignore[misc]
    """A ``socketio.Client`` whose event handlers run one at a time, in arrival order."""

    def _engineio_client_class(self) -> type[_InOrderEngineIOClient]:
        return _InOrderEngineIOClient


__all__ = ["InOrderClient"]
