"""Run the audio server: ``python app.py`` (``--help`` lists the settings)."""

from __future__ import annotations

import logging
import sys

from audioserver import config, create_app

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


def main(argv: list[str] | None = None) -> None:
    overrides = config.parse_command_line(argv)
    settings = {**config.defaults(), **config.from_environment(), **overrides}
    configure_logging(settings["LOG_LEVEL"])
    app = create_app(overrides)
    socketio = app.extensions["socketio"]
    logging.getLogger(__name__).info(
        "serving on http://%s:%d with %d workers, data in %s",
        app.config["HOST"], app.config["PORT"], app.config["WORKERS"], app.config["DATA_DIR"],
    )  # fmt: skip
    socketio.run(app, host=app.config["HOST"], port=app.config["PORT"], allow_unsafe_werkzeug=True)


if __name__ == "__main__":
    main()
