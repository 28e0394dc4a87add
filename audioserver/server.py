"""Run the audio server: the ``audio-server`` command, and ``python app.py`` (``--help``)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler
from werkzeug.serving import make_server as make_werkzeug_server

from . import config, create_app, uploads
from .errors import CLIENT_FAULTS
from .security import STATIC_HEADERS, content_security_policy

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] [task %(task_id)s] %(name)s: %(message)s"


class TaskIdFilter(logging.Filter):
    """Gives every record a task_id (``-`` for lines about no task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id"):
            record.task_id = "-"
        return True


def configure_logging(level: str) -> None:
    """Log to the console with a timestamp, level, thread name and task id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(TaskIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # One line per request would drown the task lines (Socket.IO polls).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


# What Werkzeug's HTTP parser refuses before the app sees a request, in the app's words.
_PARSER_ERRORS = {
    414: ("uri_too_long", "The request's address is longer than the server accepts (64 KB)."),
    431: (
        "headers_too_large",
        "The request has a header line longer than 64 KB or more than 100 headers.",
    ),
}
_BAD_REQUEST = ("bad_request", "The request is not valid HTTP/1.1.")


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler, with the two changes a WebSocket server needs.

    - A WebSocket ends the connection. simple-websocket takes the socket over
      for the WebSocket; when it ends, Engine.IO raises ``ConnectionError`` so
      that Werkzeug writes no HTTP answer, and Werkzeug calls
      ``connection_dropped``. But the upgrade request was HTTP/1.1, so the
      handler still counts the connection as kept alive and reads "the next
      request" from it: the WebSocket's last frames, logged as an ERROR "code
      400, message Bad request syntax". A dropped connection carries no more
      requests, so here it is closed.
    - What Werkzeug's parser refuses itself (a 64 KB address: 414; a 64 KB
      header line or more than 100 headers: 431; a request line that is not
      HTTP) is answered in JSON like every other error, with the security
      headers, and logged as one short WARNING line (rate-limited: the
      client's fault, not the server's) instead of an ERROR with the raw bytes.
    """

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        error, text = _PARSER_ERRORS.get(code, _BAD_REQUEST)
        CLIENT_FAULTS.warning(
            logger, "%s sent what is not an HTTP request (%d %s): %.100s",
            self.address_string(), code, error, message or "",
        )  # fmt: skip
        body = json.dumps({"error": error, "message": text}).encode()
        # A line that is not HTTP leaves the version at HTTP/0.9, whose answers have no
        # status line: the client would not even learn that it was refused.
        self.request_version = "HTTP/1.1"
        self.send_response(code)
        headers = {
            **STATIC_HEADERS,
            "Content-Security-Policy": content_security_policy(""),
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Connection": "close",
        }
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True


def make_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """Werkzeug's threaded server for app on host:port (port 0: any free port), not yet serving.

    Its connections are handled by ``RequestHandler``, with the idle timeout of
    ``uploads.idle_timeout_handler``.
    """
    handler = uploads.idle_timeout_handler(app, RequestHandler)
    return make_werkzeug_server(host, port, app, threaded=True, request_handler=handler)


def stop_on_sigterm(app: Flask) -> None:
    """At SIGTERM, stop running tasks (reason "shutdown"), let the sockets flush, and exit.

    Each stopped task keeps its partial result and writes task.json; its
    temporary files are deleted; a restart serves it again. All within about
    five seconds, as service managers expect.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info("SIGTERM: stopping the running tasks")
        app.extensions["uploads"].close()  # uploads in progress end, their .part files go
        app.extensions["audio_engine"].shutdown(timeout=3.0)
        app.extensions["socketio"].server.eio.logger.disabled = True  # no noise while closing
        app.extensions["audio_publisher"].drain(timeout=1.0)
        logger.info("stopped; exiting")
        raise SystemExit(0)  # out of the server's loop, in the main thread

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> None:
    """Read the settings (defaults, environment, flags), set up logging and serve."""
    command = Path(sys.argv[0]).name
    prog = "python app.py" if command == "app.py" else command
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["process"]:  # files processed here, with no server: see local.py
        from . import local

        sys.exit(local.main(arguments[1:], prog=f"{prog} process"))
    if arguments[:1] == ["worker"]:  # a cluster worker (REDIS_URL): see worker.py
        from . import worker

        sys.exit(worker.main(arguments[1:], prog=f"{prog} worker"))
    overrides = config.parse_command_line(argv, prog=prog)
    settings = {**config.defaults(), **config.from_environment(), **overrides}
    configure_logging(settings["LOG_LEVEL"])
    app = create_app(overrides)
    server = make_server(app, app.config["HOST"], app.config["PORT"])
    stop_on_sigterm(app)
    # Werkzeug's threaded server is the documented way to run on a workstation: said
    # once, plainly, at INFO. (socketio.run() would log a WARNING at every start when
    # stdin is not a terminal, as under systemd or a test, and app.run() a banner.)
    logger.info(
        "serving on http://%s:%d with %d workers, data in %s (Werkzeug's threaded server; "
        "for many users run it under gunicorn, see Deployment in the README)",
        app.config["HOST"], server.server_port, app.config["WORKERS"], app.config["DATA_DIR"],
    )  # fmt: skip
    server.serve_forever()
