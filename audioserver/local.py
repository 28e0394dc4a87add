"""``audio-server process``: the server's processing on this machine, with no server.

ffmpeg-normalize's job in one command: the files given are processed at once
by the very engine the server runs (``TaskEngine``: the same thread pool,
decoder, steps, analysis and encoders), in this process, with no HTTP and no
Socket.IO; a progress bar a file, then each result and its loudness. A
result is byte for byte the one the server's ``GET /tasks/<id>/result`` gives
for the same input, pipeline, chunk length and format.

The engine works in a scratch folder beside the first output (so that the
results are moved, not copied, into place), removed at the end. The inputs
are not copied: the engine gets a symbolic link to each.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import config
from .audio.encoders import FORMATS
from .audio.ffmpeg import find_ffmpeg
from .exceptions import AudioServerError
from .routes import upload_options
from .run import NullObserver
from .tasks import Task, TaskEngine, TaskOptions

EXIT_INTERRUPTED = 130  # the shell's own code for a command ended by Ctrl-C
REDRAW_SECONDS = 0.2
STOP_WAIT_SECONDS = 15.0  # after Ctrl-C, for the stopped tasks to settle
BAR_WIDTH = 24
ENDED = frozenset({"completed", "stopped", "failed"})


class CommandError(Exception):
    """A mistake in the command line: one line on stderr, exit status 1."""


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The command line of ``audio-server process``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Process audio files on this machine with the server's own engine "
        "(no server, no network): a progress bar a file, then each result and its "
        "loudness. Several files are processed at once, on one thread pool.",
        epilog="Example: %(prog)s song.mp3 --pipeline 'highpass=freq=80,loudness=target=-14' "
        "-o song_processed.flac. The server's settings apply too (AUDIO_WORKERS, "
        "AUDIO_MAX_ACTIVE_TASKS, AUDIO_FFMPEG, AUDIO_MAX_AUDIO_SECONDS, ...).",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files")
    parser.add_argument(
        "-p", "--pipeline", help="processing steps, e.g. 'highpass=freq=80,normalize' "
        "(default: normalize; '' for none; GET /pipeline/steps or the README lists them)",
    )  # fmt: skip
    parser.add_argument(
        "-f", "--format", choices=tuple(FORMATS),
        help="result format (default: from -o's extension, else wav)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", help="output file, or folder (for several files, or ending in /); "
        "default: NAME_processed.FORMAT beside each input",
    )  # fmt: skip
    parser.add_argument("--chunk-seconds", help="chunk length, 0.25 to 60 (default 2)")
    parser.add_argument(
        "--workers", type=_positive, help="threads in the pool (default: every core)"
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="ERROR", help="the engine's log lines shown (default: ERROR)"
    )
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None, *, prog: str = "audio-server process") -> int:
    """Process the files of the command line; return the exit status."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"{prog}: %(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        return process(args, prog=prog)
    except CommandError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except AudioServerError as error:  # an option the server would refuse too
        print(f"{prog}: error: {error.message} ({error.code})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: quit now
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- one run of the command -------------------------------------------------------------


@dataclass
class Run:
    """One input file: where its result goes, its task, or why it was refused."""

    path: Path
    output: Path
    task: Task | None = None
    refused: str | None = None

    @property
    def name(self) -> str:
        return self.path.name


class Endings(NullObserver):
    """An observer that wakes the command whenever a task ends."""

    def __init__(self) -> None:
        self.changed = threading.Event()

    def task_ended(self, outcome: str) -> None:
        self.changed.set()


def process(args: argparse.Namespace, *, prog: str) -> int:
    """Run every file through one engine; print each one's outcome."""
    fmt = args.format or format_of(args.output, several=len(args.files) > 1)
    for path in args.files:
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
    outputs = output_paths(args.files, args.output, fmt)
    task_options(args, fmt)  # bad options end the command before any work
    runs = [Run(path, output) for path, output in zip(args.files, outputs, strict=True)]
    endings = Endings()
    bars = Bars(
        [run.name for run in runs],
        enabled=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    with scratch_folder(beside=outputs[0]) as scratch:
        engine = make_engine(scratch, workers=args.workers, tasks=len(runs), events=endings)
        try:
            start(engine, runs, lambda: task_options(args, fmt))
            interrupted = not follow(engine, runs, endings, bars)
            if interrupted:
                say(f"{prog}: interrupted: stopping (Ctrl-C again to quit now)", sys.stderr)
                for run in runs:
                    if run.task is not None:
                        with contextlib.suppress(AudioServerError):
                            engine.stop(run.task.id)
                follow(engine, runs, endings, bars, timeout=STOP_WAIT_SECONDS)
            statuses = [finish(engine, run, prog=prog) for run in runs]
        finally:
            engine.shutdown()
    if interrupted:
        return EXIT_INTERRUPTED
    return 0 if all(status == "completed" for status in statuses) else 1


@contextlib.contextmanager
def scratch_folder(*, beside: Path) -> Iterator[Path]:
    """A hidden folder for the engine beside an output (results then move by a rename)."""
    try:
        folder = tempfile.TemporaryDirectory(prefix=".audio-server-", dir=beside.parent)
    except OSError as error:
        raise CommandError(f"cannot write in {beside.parent}: {error.strerror}") from error
    with folder as name:
        yield Path(name)


def task_options(args: argparse.Namespace, fmt: str) -> TaskOptions:
    """The options as the server reads them from an upload form (its checks, its messages).

    Each task needs its own: a pipeline's steps keep what they measure in the file.
    """
    form = {"format": fmt, "stream_audio": "false"}  # nobody listens to the chunks' audio
    if args.pipeline is not None:
        form["pipeline"] = args.pipeline
    if args.chunk_seconds is not None:
        form["chunk_seconds"] = args.chunk_seconds
    return upload_options(form)


def make_engine(folder: Path, *, workers: int | None, tasks: int, events: Endings) -> TaskEngine:
    """The server's engine, set up from the server's settings, for these tasks only."""
    settings = {**config.defaults(), **config.from_environment()}
    if workers is not None:
        settings["WORKERS"] = workers
    try:
        ffmpeg = find_ffmpeg(settings["FFMPEG"])
    except FileNotFoundError as error:
        raise CommandError(str(error)) from error
    return TaskEngine.from_config(
        settings,
        data_dir=folder,
        ffmpeg=ffmpeg,
        observer=events,
        max_queued=tasks,  # every file waits for its turn
        sweep_seconds=0,  # nothing outlives the command
    )


def start(engine: TaskEngine, runs: list[Run], options: Callable[[], TaskOptions]) -> None:
    """Give every file to the engine, as an upload would; a file it refuses says why."""
    uploads = engine.data_dir / "uploads"
    uploads.mkdir(exist_ok=True)
    for number, run in enumerate(runs):
        staged = uploads / f"input-{number}"
        try:
            staged.symlink_to(run.path.resolve())
        except OSError:  # a file system without symbolic links: a copy
            shutil.copyfile(run.path, staged)
        try:
            run.task = engine.create(staged, filename=run.name, options=options())
        except AudioServerError as error:
            run.refused = f"{error.message} ({error.code})"


def follow(
    engine: TaskEngine,
    runs: list[Run],
    endings: Endings,
    bars: Bars,
    *,
    timeout: float | None = None,
) -> bool:
    """Draw the bars until every task has ended; False if Ctrl-C (or the timeout) came first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            tasks = [None if run.task is None else engine.describe(run.task) for run in runs]
            bars.draw(tasks)
            if all(task is None or task["status"] in ENDED for task in tasks):
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            endings.changed.wait(REDRAW_SECONDS)
            endings.changed.clear()
    except KeyboardInterrupt:
        return False


def finish(engine: TaskEngine, run: Run, *, prog: str) -> str:
    """Move a task's result into place and print its outcome; return its status."""
    if run.task is None:
        say(f"{prog}: {run.name}: {run.refused}", sys.stderr)
        return "refused"
    run.task.retired.wait(STOP_WAIT_SECONDS)  # its encoder finished, its files closed
    event, end = run.task.terminal or ("processing_stopped", {})
    kept = False
    if event != "processing_error" and end.get("chunks_emitted"):
        try:
            shutil.move(engine.result(run.task), run.output)
            kept = True
        except AudioServerError as error:
            say(f"{prog}: {run.name}: no result: {error.message}", sys.stderr)
    for warning in end.get("warnings", []):
        say(f"{prog}: {run.name}: {warning['message']}", sys.stderr)
    if event == "processing_complete":
        say(completed_report(run.name, run.output, end))
        return "completed"
    if event == "processing_error":
        say(f"{prog}: {run.name}: processing failed: {end['message']} ({end['error']})", sys.stderr)
        return "failed"
    task = engine.describe(run.task)
    what = f"partial output kept in {run.output}" if kept else "no output"
    say(
        f"{prog}: {run.name}: stopped after {task['chunks_done']} of "
        f"{task['chunks_total'] or '?'} chunks; {what}",
        sys.stderr,
    )
    return "stopped"


# -- names and text ---------------------------------------------------------------------


def format_of(output: str | None, *, several: bool = False) -> str:
    """The result format an output name asks for (wav for a folder or no name).

    For several inputs the output is a folder, whatever its name.
    """
    if output is None or several or output.endswith(("/", os.sep)) or Path(output).is_dir():
        return "wav"
    suffix = Path(output).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise CommandError(f"cannot tell the format of {output!r}: use --format ({', '.join(FORMATS)})")


def output_paths(inputs: Sequence[Path], output: str | None, fmt: str) -> list[Path]:
    """Where each input's result goes (as audio-client names them); several inputs need a folder."""
    if output is None:
        paths = [path.with_name(f"{path.stem}_processed.{fmt}") for path in inputs]
    elif len(inputs) > 1 or output.endswith(("/", os.sep)) or Path(output).is_dir():
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{path.stem}_processed.{fmt}" for path in inputs]
    else:
        paths = [Path(output)]
        if not paths[0].parent.is_dir():
            raise CommandError(f"{paths[0].parent}: no such folder")
    if len(set(paths)) < len(paths):
        raise CommandError("two inputs have the same name: their outputs would collide")
    return paths


def completed_report(name: str, output: Path, end: dict[str, Any]) -> str:
    """The line printed for a completed file: what was made, how fast, and its loudness."""
    summary = end.get("summary") or {}
    speed = f" ({end['realtime_factor']:.1f}x realtime)" if end.get("realtime_factor") else ""
    return (
        f"{name} -> {output}: {end['duration']:.1f} s of audio in {end['elapsed']:.2f} s{speed}; "
        f"{_figure(summary.get('integrated_lufs'), 'LUFS')}, "
        f"true peak {_figure(summary.get('true_peak_db'), 'dBTP')}, "
        f"LRA {_figure(summary.get('loudness_range_lu'), 'LU')}"
    )


def _figure(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.1f} {unit}"


def say(text: str, stream: IO[str] | None = None) -> None:
    """Print a line (stdout unless told)."""
    print(text, file=stream or sys.stdout, flush=True)


class Bars:
    """A progress line a file on stderr, redrawn in place (audio-client's look, without tqdm).

    Each line: percent done (both passes of a global step count), ETA, realtime
    factor and chunks produced, as ``song.mp3  42%|██████████      | ETA 00:03,
    39.6x realtime, 7/15 chunks``.
    """

    def __init__(self, names: list[str], *, enabled: bool, stream: IO[str] | None = None) -> None:
        self.names = [name.ljust(max(map(len, names))) for name in names]
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._drawn = 0

    def draw(self, tasks: Sequence[Mapping[str, Any] | None]) -> None:
        """Draw one line a task (None: refused), over the lines drawn before."""
        if not self.enabled:
            return
        rows = [line(name, task) for name, task in zip(self.names, tasks, strict=True)]
        if self.stream.isatty():  # a line that wrapped would break the redrawing
            rows = [row[: shutil.get_terminal_size().columns - 1] for row in rows]
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.stream.write(up + "".join(f"{row}\x1b[K\n" for row in rows))
        self.stream.flush()
        self._drawn = len(rows)


def line(name: str, task: Mapping[str, Any] | None) -> str:
    """One file's progress line."""
    if task is None:
        return f"{name} refused"
    fraction = 1.0 if task["status"] == "completed" else min(max(task["progress"], 0.0), 1.0)
    elapsed = task["elapsed"] or 0.0
    done_seconds = (task["duration"] or 0.0) * fraction
    filled = round(BAR_WIDTH * fraction)
    figures = [f"ETA {_clock(elapsed * (1 - fraction) / fraction if fraction else None)}"]
    if elapsed > 0 and done_seconds > 0:
        figures.append(f"{done_seconds / elapsed:.1f}x realtime")
    figures.append(f"{task['chunks_done']}/{task['chunks_total'] or '?'} chunks")
    if task["status"] not in ("processing", "completed"):
        figures.append(task["status"])
    bar = "█" * filled + " " * (BAR_WIDTH - filled)
    return f"{name} {100 * fraction:3.0f}%|{bar}| {', '.join(figures)}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes:02d}:{seconds:02d}"
