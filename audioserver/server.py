"""Run the audio server: the ``audio-server`` command, and ``python app.py`` (``--help``)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from . import config, create_app, uploads

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


def stop_on_sigterm(app) -> None:
    """At SIGTERM, stop running tasks (reason "shutdown"), let the sockets flush, and exit.

    Each stopped task keeps its partial result and writes task.json; its
    temporary files are deleted; a restart serves it again. All within about
    five seconds, as service managers expect.
    """

    def stop(signum, frame) -> None:
        logger.info("SIGTERM: stopping the running tasks")
        app.extensions["uploads"].close()  # uploads in progress end, their .part files go
        app.extensions["audio_engine"].shutdown(timeout=3.0)
        app.extensions["socketio"].server.eio.logger.disabled = True  # no noise while closing
        app.extensions["audio_broadcaster"].drain(timeout=1.0)
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
    overrides = config.parse_command_line(argv, prog=prog)
    settings = {**config.defaults(), **config.from_environment(), **overrides}
    configure_logging(settings["LOG_LEVEL"])
    app = create_app(overrides)
    socketio = app.extensions["socketio"]
    stop_on_sigterm(app)
    logger.info(
        "serving on http://%s:%d with %d workers, data in %s",
        app.config["HOST"], app.config["PORT"], app.config["WORKERS"], app.config["DATA_DIR"],
    )  # fmt: skip
    socketio.run(app, host=app.config["HOST"], port=app.config["PORT"], allow_unsafe_werkzeug=True,
                 request_handler=uploads.idle_timeout_handler(app))  # fmt: skip
