"""Settings: their defaults, environment overrides and command-line flags.

Each setting has one definition here. It can be set, from weakest to
strongest, by its default, by the environment (``AUDIO_<NAME>``; ``HOST`` and
``PORT`` also plainly), by a command-line flag of ``python app.py``
(``--workers 4``) and, in tests, by ``create_app(test_config)``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One configurable value."""

    name: str
    default: Any
    type: type
    help: str
    plain_env: bool = False  # also read from the environment without the AUDIO_ prefix

    @property
    def env_name(self) -> str:
        return f"AUDIO_{self.name}"

    @property
    def flag(self) -> str:
        return "--" + self.name.lower().replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        name="HOST",
        default="127.0.0.1",
        type=str,
        plain_env=True,
        help="interface to listen on (0.0.0.0 for every interface)",
    ),
    Setting(name="PORT", default=5001, type=int, plain_env=True, help="TCP port"),
    Setting(
        name="CORS_ORIGINS",
        default="",
        type=str,
        help="other origins allowed to call the API and connect to Socket.IO, comma-separated "
        "(https://a.example,https://b.example), or * for any; empty: the server's own origin only",
    ),
    Setting(
        name="ALLOWED_HOSTS",
        default="",
        type=str,
        help="host names the server answers to, besides localhost, IP addresses and HOST, "
        "comma-separated (audio.example.com, or .example.com for every name under it), or * for "
        "any; a request for another name (the Host header) gets 400 bad_host: against DNS "
        "rebinding",
    ),
    Setting(
        name="DATA_DIR",
        default="data",
        type=str,
        help="folder for uploads, produced chunks and results (one subfolder a task)",
    ),
    Setting(
        name="WORKERS",
        default=os.cpu_count() or 1,
        type=int,
        help="threads in the pool that processes the chunks of every task",
    ),
    Setting(
        name="MAX_UPLOAD_MB",
        default=500.0,
        type=float,
        help="largest upload accepted, in MB (larger: 413)",
    ),
    Setting(
        name="MAX_UPLOADS",
        default=32,
        type=int,
        help="uploads received at the same time (each holds a connection); beyond this: 503",
    ),
    Setting(
        name="UPLOAD_TIMEOUT_SECONDS",
        default=30.0,
        type=float,
        help="an upload whose body sends nothing for this long is cut off (408) and deleted",
    ),
    Setting(
        name="IDLE_TIMEOUT_SECONDS",
        default=60.0,
        type=float,
        help="python app.py closes a connection that sends nothing for this long (at least "
        "UPLOAD_TIMEOUT_SECONDS + 2; Socket.IO clients send every 25 s)",
    ),
    Setting(
        name="DISK_RESERVE_MB",
        default=100.0,
        type=float,
        help="space kept free on the data folder's disk: an upload or a task that would "
        "leave less gets 507",
    ),
    Setting(
        name="MAX_ACTIVE_TASKS",
        default=32,
        type=int,
        help="tasks processed at the same time (their chunks interleave in the pool, the task "
        "that has used least CPU first); each holds an ffmpeg decoder and at most CHUNK_WINDOW "
        "jobs of audio, about 18 MB in all",
    ),
    Setting(
        name="MAX_QUEUED_TASKS",
        default=32,
        type=int,
        help="tasks waiting for a slot; beyond this an upload gets 503",
    ),
    Setting(
        name="MAX_AUDIO_SECONDS",
        default=4 * 3600.0,
        type=float,
        help="longest audio accepted, in seconds (decoding stops there)",
    ),
    Setting(
        name="MAX_AUDIO_SAMPLES",
        default=4 * 3600 * 48000 * 2,
        type=int,
        help="most decoded samples (frames x channels) one upload may hold: 4 h of 48 kHz stereo "
        "(more, by the header: 413 at upload; while decoding: the task fails)",
    ),
    Setting(
        name="MAX_PIPELINE_COST",
        default=1.0,
        type=float,
        help="most estimated CPU seconds a pipeline may take per second of audio (more: 400 "
        "pipeline_too_costly, naming the costliest steps)",
    ),
    Setting(
        name="DECODE_STALL_SECONDS",
        default=30.0,
        type=float,
        help="a decoder that produces nothing for this long is stopped and the task fails",
    ),
    Setting(
        name="CHUNK_WINDOW",
        default=0,
        type=int,
        help="chunks of one task in flight at once (0: twice the workers)",
    ),
    Setting(
        name="RESULT_TTL_HOURS",
        default=24.0,
        type=float,
        help="finished tasks and their results are deleted this long after they end",
    ),
    Setting(
        name="MAX_DATA_MB",
        default=0.0,
        type=float,
        help="size cap of the data folder: oldest finished results go first; a task that "
        "running tasks leave no room for gets 507 (0: no cap)",
    ),
    Setting(
        name="SWEEP_SECONDS",
        default=60.0,
        type=float,
        help="how often expired results are looked for",
    ),
    Setting(
        name="CLIENT_BACKLOG",
        default=16,
        type=int,
        help="packets queued for a client before it is served at its own pace (a chunk is 2)",
    ),
    Setting(
        name="FFMPEG",
        default="",
        type=str,
        help="ffmpeg binary (default: ffmpeg on PATH, else the imageio-ffmpeg one)",
    ),
    Setting(
        name="NPM",
        default="npm",
        type=str,
        help="npm, to fetch the page's Socket.IO client and peaks.js at first start when "
        "neither static/vendor nor the cache has them (none: never run npm)",
    ),
    Setting(
        name="REDIS_URL",
        default="",
        type=str,
        help="cluster mode (redis://host:6379/0): task state, the queue and wake-ups in this "
        "Redis, shared with every web instance and worker (python app.py worker), DATA_DIR "
        "on a filesystem they all share; empty: one process does everything",
    ),
    Setting(name="LOG_LEVEL", default="INFO", type=str, help="DEBUG, INFO, WARNING or ERROR"),
)


def defaults() -> dict[str, Any]:
    """Return every setting at its default."""
    return {setting.name: setting.default for setting in SETTINGS}


def _convert(setting: Setting, raw: str) -> Any:
    try:
        return setting.type(raw)
    except ValueError:
        raise SystemExit(
            f"{setting.env_name}={raw!r} is not a valid {setting.type.__name__}"
        ) from None


def from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Return the settings given in the environment."""
    found = {}
    for setting in SETTINGS:
        names = [setting.env_name] + ([setting.name] if setting.plain_env else [])
        for name in names:
            if environ.get(name):
                found[setting.name] = _convert(setting, environ[name])
                break
    return found


def parse_command_line(
    argv: Sequence[str] | None = None, *, prog: str = "python app.py"
) -> dict[str, Any]:
    """Return the settings given as command-line flags (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Audio processing server: upload, chunked parallel processing, "
        "Socket.IO streaming of every processed chunk.",
        epilog="Every flag can also be set in the environment as AUDIO_<NAME> "
        "(HOST and PORT also plainly). To process files on this machine without a server: "
        "%(prog)s process FILE... (see %(prog)s process --help).",
    )
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            type=setting.type,
            default=None,
            help=f"{setting.help} (default: {setting.default}; env {setting.env_name})",
        )
    args = parser.parse_args(argv)
    return {name: value for name, value in vars(args).items() if value is not None}
