"""The server's CPU per stage of the work, measured in each thread's own CPU time.

    .venv/bin/python bench/stages.py                      # the 6-minute file, the bench's pipeline
    .venv/bin/python bench/stages.py --seconds 60 --pipeline 'highpass=freq=80' --runs 1

The server runs as users run it (``python app.py`` in its own process), a
Socket.IO client receiving every chunk; the functions that do each stage of
the work are wrapped so that each call adds the CPU time of its thread
(``time.thread_time``) to its stage, less what the wrapped functions it calls
take (so the stages never count a second twice). After a warm-up, ``--runs``
tasks are measured; the table gives each stage's CPU seconds per task and its
share of the server process's whole CPU time over those tasks; "the rest" is
what no stage covers: the task engine, HTTP, Socket.IO's own threads. A
wrapper costs about a microsecond per call, a few per chunk.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The code beside this benchmark, whatever is installed (to measure another checkout too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, ServerProcess, make_mp3
from run import PIPELINE, e2e

# (stage, [(module, attribute path)]): the functions whose own CPU time is that stage's.
# A function missing from the code being measured (an older version) is skipped.
STAGES: list[tuple[str, list[tuple[str, str]]]] = [
    ("reading the decoder's pipe", [("audioserver.audio.decode", "Decoder.read")]),
    ("chunk segments to float64", [("audioserver.audio.chunking", "Chunk.block")]),
    ("high-pass filter", [("audioserver.audio.steps.filters", "_Butterworth.process")]),
    ("loudness gain", [("audioserver.audio.steps.loudness", "Loudness.process")]),
    ("K-weighting and 100 ms energies", [("audioserver.audio.loudness", "chunk_energies")]),
    ("the loudness step's measure, besides", [("audioserver.audio.steps.loudness",
                                                "Loudness.measure")]),
    ("true peak", [("audioserver.audio.loudness", "true_peak")]),
    ("the output meter, besides", [("audioserver.audio.meter", "OutputMeter.measure")]),
    ("the spool: writing", [("audioserver.audio.chunking", "Spool.write")]),
    ("the spool: reading back, to 32-bit segments", [("audioserver.audio.chunking", "Spool.read"),
                                                     ("audioserver.audio.pcm",
                                                      "Quantizer.__call__")]),
    ("spectrum", [("audioserver.audio.analysis", "spectrum")]),
    ("waveform and levels", [("audioserver.audio.analysis", "waveform"),
                             ("audioserver.audio.analysis", "levels"),
                             ("audioserver.audio.analysis", "_peak_and_mean_square")]),
    ("16-bit PCM", [("audioserver.audio.analysis", "to_pcm16"),
                    ("audioserver.audio.analysis", "_pcm16_of_clipped")]),
    ("the chunk's analysis, besides (one clip)", [("audioserver.audio.analysis",
                                                   "analyse_chunk")]),
    ("encoding the Socket.IO events", [("audioserver.events", "SocketBroadcaster.prepare"),
                                       ("audioserver.events", "SocketPublisher.encode"),
                                       ("audioserver.events", "encode_event")]),
    ("result WAV and chunk store", [("audioserver.storage", "ChunkStore.append")]),
    ("sending over the WebSocket", [("simple_websocket.ws", "Base.send")]),
]  # fmt: skip

_spent: dict[str, float] = {}
_local = threading.local()


def _timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap function: its thread's CPU time goes to stage, less that of timed callees."""

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        stack = _local.__dict__.setdefault("stack", [])
        started = time.thread_time()
        stack.append(0.0)  # what callees took
        try:
            return function(*args, **kwargs)
        finally:
            inner = stack.pop()
            took = time.thread_time() - started
            _spent[stage] = _spent.get(stage, 0.0) + took - inner
            if stack:
                stack[-1] += took

    return timed


def _install() -> None:
    for stage, functions in STAGES:
        for module_name, path in functions:
            module = importlib.import_module(module_name)
            owner_name, _, name = path.rpartition(".")
            owner = getattr(module, owner_name, None) if owner_name else module
            if owner is None or not hasattr(owner, name):
                continue  # not in this version of the code
            original = owner.__dict__[name] if owner_name else getattr(owner, name)
            setattr(owner, name, _timed(stage, original))


def serve_timed(output: Path, arguments: list[str]) -> None:
    """Run app.py with the stages' functions timed; SIGUSR1 writes the times so far to output."""
    _install()

    def report(signum: int, frame: Any) -> None:
        part = output.with_suffix(".part")
        part.write_text(json.dumps(_spent))
        part.rename(output)

    signal.signal(signal.SIGUSR1, report)
    sys.argv = [str(ROOT / "app.py"), *arguments]
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


class TimedServer(ServerProcess):
    """The server under serve_timed."""

    def __init__(self, output: Path, **settings: Any) -> None:
        self.output = output
        super().__init__(**settings)

    def program(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--serve-timed",
                str(self.output), "--"]  # fmt: skip

    def stage_seconds(self) -> dict[str, float]:
        """The stages' CPU seconds so far."""
        self.output.unlink(missing_ok=True)
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.output.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not report its stages")
            time.sleep(0.01)
        spent: dict[str, float] = json.loads(self.output.read_text())
        return spent


def measure(path: Path, pipeline: str, runs: int, workers: int) -> dict[str, Any]:
    """Each stage's CPU seconds per task, and the server's CPU per task."""
    data = Path(os.environ.get("TMPDIR", "/tmp")) / f"stages-{os.getpid()}.json"
    with TimedServer(data, workers=workers) as server:
        e2e(server, path, pipeline)  # warm up
        before, cpu = server.stage_seconds(), server.cpu_seconds()
        for _ in range(runs):
            e2e(server, path, pipeline)
        after, total = server.stage_seconds(), server.cpu_seconds() - cpu
    data.unlink(missing_ok=True)
    stages = {stage: (after.get(stage, 0.0) - before.get(stage, 0.0)) / runs for stage, _ in STAGES}
    return {"stages": stages, "server_cpu_s": total / runs}


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--serve-timed"]:
        serve_timed(Path(arguments[1]), arguments[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=360.0, help="the file's length")
    parser.add_argument("--pipeline", default=PIPELINE)
    parser.add_argument("--runs", type=int, default=3, help="tasks measured after the warm-up")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(arguments)
    result = measure(make_mp3(args.seconds), args.pipeline, args.runs, args.workers)
    total = result["server_cpu_s"]
    rows = [(stage, seconds) for stage, seconds in result["stages"].items() if seconds > 0]
    rows.append(("the rest: task engine, HTTP, Socket.IO", total - sum(s for _, s in rows)))
    print(f"`{args.pipeline}`, {args.seconds:g} s file, {args.workers} workers, "
          f"{args.runs} tasks: the server's CPU per task")  # fmt: skip
    print("| stage | CPU (s) | share |\n|---|---|---|")
    for stage, seconds in rows:
        print(f"| {stage} | {seconds:.3f} | {100 * seconds / total:.1f} % |")
    print(f"| total: the server process | {total:.3f} | 100 % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
