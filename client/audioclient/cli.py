"""``audio-client``: process files on an audio server from the command line.

Commands: ``process`` (upload, follow with a progress bar, save, summary),
``status``, ``stop``, ``result`` and ``steps``. Every error ends the command
with one line on stderr and exit status 1; Ctrl-C during ``process`` stops
the tasks on the server, keeps what arrived and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .api import ClientError, Server
from .connection import Connection
from .job import STOP_WAIT_SECONDS, Job, ProcessOptions
from .progress import ProgressBar, notice, say

FORMATS = ("wav", "flac", "mp3", "ogg", "opus")
DEFAULT_SERVER = "http://localhost:5001"
EXIT_INTERRUPTED = 130  # the shell's own code for a command ended by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per action, --server on each."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("AUDIO_SERVER", DEFAULT_SERVER),
        help="the server's URL (default: $AUDIO_SERVER or %(default)s)",
    )
    parser = argparse.ArgumentParser(
        prog="audio-client",
        description="Process audio files on an audio server (see audio-server).",
        epilog="Example: audio-client process song.mp3 --pipeline 'highpass=freq=80,"
        "loudness=target=-14' --format flac -o song_processed.flac",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    process = commands.add_parser(
        "process",
        parents=[common],
        help="upload files, show progress, save the results",
        description="Upload files, follow their processing with a progress bar each, "
        "save the results and print their loudness summary. Ctrl-C stops the tasks "
        "on the server and keeps the partial output.",
    )
    process.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files")
    process.add_argument(
        "-p", "--pipeline", help="processing steps, e.g. 'highpass=freq=80,normalize' "
        "(default: the server's, normalize; '' for none; see: audio-client steps)",
    )  # fmt: skip
    process.add_argument(
        "-f", "--format", choices=FORMATS,
        help="result format (default: from -o's extension, else wav)",
    )  # fmt: skip
    process.add_argument(
        "-o", "--output", help="output file, or folder (for several files, or ending in /); "
        "default: NAME_processed.FORMAT beside each input",
    )  # fmt: skip
    process.add_argument("--chunk-seconds", type=float, help="chunk length, 0.25 to 60 (default 2)")
    process.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )  # fmt: skip

    status = commands.add_parser("status", parents=[common], help="show a task's status")
    status.add_argument("task_id", metavar="TASK_ID")
    status.add_argument("--json", action="store_true", help="print the task JSON as it is")

    stop = commands.add_parser("stop", parents=[common], help="stop a task")
    stop.add_argument("task_id", metavar="TASK_ID")

    result = commands.add_parser("result", parents=[common], help="download a task's result")
    result.add_argument("task_id", metavar="TASK_ID")
    result.add_argument("-o", "--output", type=Path, help="file (default: the server's name)")

    commands.add_parser("steps", parents=[common], help="list the pipeline steps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return command(args)
    except ClientError as error:
        print(f"audio-client: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before any task was started (process handles its own)
        print("audio-client: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader left (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# -- process ---------------------------------------------------------------------------


def process(args: argparse.Namespace) -> int:
    """Process every file at once on one connection; print each file's outcome."""
    fmt = args.format or format_of(args.output, several=len(args.files) > 1)
    for path in args.files:
        if not path.is_file():
            raise ClientError(f"{path}: no such file")
    outputs = output_paths(args.files, args.output, fmt)
    options = ProcessOptions(pipeline=args.pipeline, format=fmt, chunk_seconds=args.chunk_seconds)
    server = Server(args.server)
    server.health()  # a clear "connection refused" before anything else
    connection = Connection(args.server, on_notice=notice)
    connection.open()
    width = max(len(path.name) for path in args.files)
    jobs = [
        Job(
            path,
            output,
            options=options,
            server=server,
            connection=connection,
            bar=ProgressBar(path.name.ljust(width), position=i, enabled=args.progress),
        )
        for i, (path, output) in enumerate(zip(args.files, outputs, strict=True))
    ]
    interrupted = False
    try:
        for job in jobs:
            threading.Thread(target=job.run, name=f"job-{job.name}", daemon=True).start()
        interrupted = not wait_for(jobs)
        if interrupted:
            notice("interrupted: stopping the tasks on the server (Ctrl-C again to quit now)")
            for job in jobs:
                job.request_stop()
            wait_for(jobs, timeout=STOP_WAIT_SECONDS + 5)
    finally:
        connection.close()
    for job in jobs:
        if job.exit_status == 0:
            say(job.report)
        else:
            say(f"audio-client: {job.report or job.name + ': interrupted'}", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    return max(job.exit_status for job in jobs)


def wait_for(jobs: list[Job], *, timeout: float | None = None) -> bool:
    """Wait until every job is done; return False if Ctrl-C came first (or the timeout)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for job in jobs:
            while not job.done.wait(0.2):  # short waits: Ctrl-C is seen at once
                if deadline is not None and time.monotonic() > deadline:
                    return False
        return True
    except KeyboardInterrupt:
        return False


def format_of(output: str | None, *, several: bool = False) -> str:
    """The result format an output name asks for (wav for a folder or no name).

    For several inputs the output is a folder, whatever its name.
    """
    if output is None or several or output.endswith(("/", os.sep)) or Path(output).is_dir():
        return "wav"
    suffix = Path(output).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise ClientError(f"cannot tell the format of {output!r}: use --format ({', '.join(FORMATS)})")


def output_paths(inputs: Sequence[Path], output: str | None, fmt: str) -> list[Path]:
    """Where each input's result goes; several inputs need a folder."""
    if output is None:
        paths = [path.with_name(f"{path.stem}_processed.{fmt}") for path in inputs]
    elif len(inputs) > 1 or output.endswith(("/", os.sep)) or Path(output).is_dir():
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{path.stem}_processed.{fmt}" for path in inputs]
    else:
        paths = [Path(output)]
    if len(set(paths)) < len(paths):
        raise ClientError("two inputs have the same name: their outputs would collide")
    return paths


# -- the other commands ----------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    task = Server(args.server).task(args.task_id)
    if args.json:
        print(json.dumps(task, indent=2))
    else:
        print(describe_task(task))
    return 0


def stop(args: argparse.Namespace) -> int:
    answer = Server(args.server).stop(args.task_id)
    print(f"{answer['message']}: task {answer['task_id']} is {answer['status']}")
    return 0


def result(args: argparse.Namespace) -> int:
    path = Server(args.server).download_result(args.task_id, args.output, on_retry=notice)
    print(f"saved {path} ({path.stat().st_size} bytes)")
    return 0


def steps(args: argparse.Namespace) -> int:
    print(steps_table(Server(args.server).steps()))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "process": process,
    "status": status,
    "stop": stop,
    "result": result,
    "steps": steps,
}


# -- text ------------------------------------------------------------------------------


def describe_task(task: dict[str, Any]) -> str:
    """A task's JSON as a few aligned lines."""
    rows = [
        ("task", task["task_id"]),
        ("file", task["filename"]),
        ("status", f"{task['status']}, {100 * task['progress']:.0f}% "
                   f"({task['chunks_done']}/{task['chunks_total']} chunks)"),
        ("audio", f"{task['duration']:.1f} s, {task['sample_rate']} Hz, "
                  f"{task['channels']} channel(s), as {task['format']}"),
        ("pipeline", pipeline_text(task["pipeline"]) or "(none)"),
        ("elapsed", f"{task['elapsed']:.2f} s"),
    ]  # fmt: skip
    if task.get("summary"):
        summary = task["summary"]
        rows.append(("loudness", loudness_text(summary)))
    if task.get("error"):
        rows.append(("error", f"{task['error']['message']} ({task['error']['error']})"))
    return "\n".join(f"{name:<9} {value}" for name, value in rows)


def loudness_text(summary: dict[str, Any]) -> str:
    def figure(key: str, unit: str) -> str:
        return "n/a" if summary.get(key) is None else f"{summary[key]:.1f} {unit}"

    return (
        f"{figure('integrated_lufs', 'LUFS')}, true peak {figure('true_peak_db', 'dBTP')}, "
        f"LRA {figure('loudness_range_lu', 'LU')}"
    )


def pipeline_text(pipeline: list[dict[str, Any]]) -> str:
    """The pipeline's JSON form in the text form: ``highpass=freq=80:order=2,normalize``."""
    parts = []
    for step in pipeline:
        options = ":".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in step.items() if key != "step")  # fmt: skip
        parts.append(f"{step['step']}={options}" if options else step["step"])
    return ",".join(parts)


def steps_table(catalogue: dict[str, Any]) -> str:
    """GET /pipeline/steps as a text table, one row per parameter."""
    rows = [("STEP", "KIND", "PARAMETER", "DEFAULT", "RANGE", "EXAMPLE")]
    for step in catalogue["steps"]:
        params = step["parameters"] or [None]
        for i, param in enumerate(params):
            first = i == 0
            rows.append((
                step["name"] if first else "",
                step["kind"] if first else "",
                *(_param_cells(param) if param else ("-", "", "")),
                step["example"] if first else "",
            ))  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    lines.append("")
    lines.append(f"Combine steps with ',' (at most {catalogue['max_steps']}); "
                 f"formats: {', '.join(catalogue['formats'])}.")  # fmt: skip
    return "\n".join(lines)


def _param_cells(param: dict[str, Any]) -> tuple[str, str, str]:
    default = "required" if param["required"] else f"{param['default']:g}"
    high = (
        f"{param['max_rate_fraction']:g} x rate"
        if "max_rate_fraction" in param
        else f"{param['max']:g}"
    )
    unit = f" {param['unit']}" if param["unit"] else ""
    return param["name"], default, f"{param['min']:g} .. {high}{unit}"
