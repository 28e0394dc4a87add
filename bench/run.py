"""Benchmark the server against ffmpeg-normalize and the decode floor; print a table, write JSON.

ffmpeg-normalize's job is timed three ways on the same file and pipeline: by
ffmpeg-normalize, through the server (upload to the last chunk received), and
by ``python app.py process`` (the same engine in one process, no server).

    .venv/bin/python bench/run.py                  # full: 6- and 40-minute files, medians of 3 runs
    .venv/bin/python bench/run.py --short          # small files, one run: what CI runs
    .venv/bin/python bench/run.py --only cpu,catalogue --only fairness   # some parts only

Every figure is a ratio of two things measured side by side in this run, on
this machine, so that it means the same on a slower or a faster one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    ROOT,
    Client,
    RedisServer,
    ServerProcess,
    WorkerProcess,
    ffmpeg_normalize_command,
    find_redis_server,
    make_mp3,
    run_command,
    run_command_cpu,
)

from audioserver.audio.ffmpeg import find_ffmpeg
from audioserver.cluster import log_key, task_key
from audioserver.storage import folder_bytes, load_snapshot

PIPELINE = "highpass=freq=80,loudness=target=-14"
STREAMING_PIPELINE = "highpass=freq=80"  # no global step: chunks flow as decoding goes
# The fairness and capacity sections: streaming too. A pipeline with a global step
# (loudness, normalize) emits nothing before its first pass has read the whole file,
# so a first chunk would measure the length of that pass, not the share of the pool.
BUSY_PIPELINE = "highpass=freq=80,gain=db=-3"
CORES = os.cpu_count() or 1
# What each step and output format costs, on the short file: (label, pipeline, format).
CATALOGUE = [
    ("analysis only (no steps)", "", "wav"),
    ("compressor", "compressor", "wav"),
    ("resample=rate=48000", "resample=rate=48000", "wav"),
    (PIPELINE, PIPELINE, "wav"),
    ("highpass=freq=80,compressor,loudness=target=-16,fade_out=seconds=3",
     "highpass=freq=80,compressor,loudness=target=-16,fade_out=seconds=3", "wav"),
    ("flac (analysis only)", "", "flac"),
    ("mp3 (analysis only)", "", "mp3"),
    ("ogg (analysis only)", "", "ogg"),
    ("opus (analysis only)", "", "opus"),
]  # fmt: skip
SECTIONS = ("e2e", "cpu", "catalogue", "latency", "memory", "stop", "concurrency", "fairness",
            "capacity", "cluster")  # fmt: skip
# The cluster section: tasks at once per process (the single server, each worker), so that a
# batch of 8 spreads over 2 workers (a worker reserves one message per free slot).
CLUSTER_ACTIVE = 4
SPOOL_BYTES_PER_SAMPLE = 4  # float32: PIPELINE's first stage is spooled before its loudness


@dataclass(frozen=True)
class Sizes:
    """How big this run is."""

    short_seconds: float  # the "6-minute" file
    long_seconds: float  # the "40-minute" file
    runs: int
    stop_repeats: int
    clients: int
    client_seconds: float
    busy_tasks: int  # long tasks processing while a new one's first chunk and stop are timed
    fair_repeats: int
    capacity_tasks: int  # long tasks at once for the memory and file-descriptor figures
    capacity_chunks: int  # chunks each of them emits between two readings of the server
    cluster_tasks: int  # tasks of the short file in one batch, in the cluster section


FULL = Sizes(360, 2400, 3, 20, 16, 30, 8, 7, 32, 10, 8)
SHORT = Sizes(20, 60, 1, 5, 4, 10, 4, 2, 8, 2, 8)


def median(measure: Callable[[], float], runs: int) -> float:
    return statistics.median(measure() for _ in range(runs))


def e2e(
    server: ServerProcess, path: Path, pipeline: str = PIPELINE, fmt: str = "wav"
) -> dict[str, float]:
    """Upload to processing_complete receiving all audio; also first-chunk latency, wire cost."""
    client = Client(server.url)
    try:
        started = time.perf_counter()
        task = client.upload(path, pipeline=pipeline, format=fmt)
        answered = time.perf_counter()
        event, end, finished = client.wait_end(task["task_id"])
        assert event == "processing_complete", end
        first = client.first_chunk[task["task_id"]]
        pcm_bytes = end["duration"] * task["sample_rate"] * task["channels"] * 2
        return {
            "seconds": finished - started,
            "first_chunk": first - answered,
            "first_chunk_at": first - started,
            "task_id": task["task_id"],
            "wire_ratio": client.wire_bytes / pcm_bytes,
            "audio_complete": client.audio_bytes / pcm_bytes,
        }
    finally:
        client.close()


def measure_e2e(sizes: Sizes, files: dict[str, Path]) -> dict[str, Any]:
    long = files["long"]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        command, env = ffmpeg_normalize_command(long, Path(folder) / "out.wav")
        results["ffmpeg_normalize_s"] = median(lambda: run_command(command, env=env), sizes.runs)
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "out.wav"
        local = [sys.executable, str(ROOT / "app.py"), "process", str(long), "--pipeline",
                 PIPELINE, "--workers", str(CORES), "-o", str(output)]  # fmt: skip
        results["local_process_s"] = median(lambda: run_command(local), sizes.runs)
    results["decode_floor_s"] = median(lambda: run_command(decode_command(long)), sizes.runs)
    with ServerProcess(workers=CORES) as server:
        runs = [e2e(server, long) for _ in range(sizes.runs)]
    results["e2e_s"] = statistics.median(run["seconds"] for run in runs)
    results["wire_ratio"] = statistics.median(run["wire_ratio"] for run in runs)
    results["audio_complete"] = min(run["audio_complete"] for run in runs)
    with ServerProcess(workers=1) as server:
        results["e2e_1_worker_s"] = median(lambda: e2e(server, long)["seconds"], sizes.runs)
    return results


def decode_command(path: Path) -> list[str]:
    """Bare decoding, the floor: ffmpeg decoding the file to nothing."""
    return [find_ffmpeg(), "-v", "error", "-i", str(path), "-f", "null", "-"]


def replay(server: ServerProcess, task_id: str) -> float:
    """A finished task's whole stream to a new client (subscribe from 0): seconds to its end."""
    client = Client(server.url)
    try:
        started = time.perf_counter()
        client.subscribe(task_id)
        event, _, finished = client.wait_end(task_id)
        assert event == "processing_complete", event
        return finished - started
    finally:
        client.close()


def self_cpu_seconds() -> float:
    """CPU time of this process (the benchmark's client: its Socket.IO and upload threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def accounted_e2e(server: ServerProcess, path: Path, pipeline: str) -> dict[str, float]:
    """One E2E run with its CPU accounting: the server, its decoder, the client, each alone.

    The server process's own CPU; its decoder's (a child process, counted when
    the server has reaped it, before the task ends); the client's (this
    process: the upload, the Socket.IO client's threads parsing every chunk).
    Pass 1 is the time to the first chunk (a global step emits nothing before
    its first pass has read the whole file), pass 2 the rest (without a global
    step, pass 1 is the first chunk's time and pass 2 is all of the work).
    """
    server_cpu, children_cpu, client_cpu = (
        server.cpu_seconds(), server.children_cpu_seconds(), self_cpu_seconds()
    )  # fmt: skip
    run: dict[str, Any] = e2e(server, path, pipeline)
    return {
        "e2e_s": run["seconds"],
        "server_cpu_s": server.cpu_seconds() - server_cpu,
        "decoder_cpu_s": server.children_cpu_seconds() - children_cpu,
        "client_cpu_s": self_cpu_seconds() - client_cpu,
        "pass1_s": run["first_chunk_at"],
        "pass2_s": run["seconds"] - run["first_chunk_at"],
        "replay_s": replay(server, run["task_id"]),
    }


def measure_cpu(sizes: Sizes, files: dict[str, Path]) -> dict[str, Any]:
    """E2E and the server's own CPU for the task, each over bare decoding, side by side per run.

    Each run decodes the file bare (wall and CPU time) and as the server's
    decoder does (32-bit PCM into a pipe), then processes it through the
    server (wall time; the CPU of the server process, of the decoder it
    starts and of the client), then replays the finished task to a new
    client; the figures are medians of the ratios. The accounting gives two
    floors for the E2E time on this machine: the CPU bound (everything's CPU
    over the cores) and the two-pass bound (the decoder alone, then the
    finished stream alone: a global step sends nothing before the decoder is
    done, and then has at least the whole stream to send).
    """
    # Here, and under either name: this module measures older checkouts too (bench/stages.py
    # imports it; a copy of an older tree with today's bench/ runs it).
    from audioserver.audio import decode

    decoder_command = getattr(decode, "decoder_command", None) or decode._command

    results: dict[str, Any] = {}
    with ServerProcess(workers=CORES) as server:
        e2e(server, files["short"])  # warm up: first imports, FFT plans
        # The two files through PIPELINE; then the short one through no steps at all: what
        # the contract asks of every task (each chunk's levels, waveform and spectrum, the
        # summary's loudness and true peak, the result, the stream), the floor of any pipeline.
        jobs = [(name, path, PIPELINE) for name, path in files.items()]
        jobs.append(("analysis", files["short"], ""))
        for name, path, pipeline in jobs:
            runs: list[dict[str, float]] = []
            for _ in range(sizes.runs):
                decode_wall, decode_cpu = run_command_cpu(decode_command(path))
                server_decode_wall, _ = run_command_cpu(
                    decoder_command(find_ffmpeg(), path.name, sizes.long_seconds + 60),
                    cwd=path.parent,
                )
                run = {
                    "decode_s": decode_wall,
                    "decode_cpu_s": decode_cpu,
                    "server_decode_s": server_decode_wall,
                    **accounted_e2e(server, path, pipeline),
                }
                run["cpu_bound_s"] = (
                    run["server_cpu_s"] + run["decoder_cpu_s"] + run["client_cpu_s"]
                ) / CORES
                run["two_pass_bound_s"] = run["server_decode_s"] + run["replay_s"]
                runs.append(run)
            for figure in runs[0]:
                results[f"{name}_{figure}"] = statistics.median(run[figure] for run in runs)
            for figure in ("e2e_s", "cpu_bound_s", "two_pass_bound_s"):
                results[f"{name}_{figure.removesuffix('_s')}_over_decode"] = statistics.median(
                    run[figure] / run["decode_s"] for run in runs
                )
            results[f"{name}_cpu_over_decode_cpu"] = statistics.median(
                run["server_cpu_s"] / run["decode_cpu_s"] for run in runs
            )
        with tempfile.TemporaryDirectory() as folder:
            command, env = ffmpeg_normalize_command(files["short"], Path(folder) / "out.wav")
            normalize = [run_command(command, env=env) for _ in range(sizes.runs)]
        results["short_ffmpeg_normalize_s"] = statistics.median(normalize)
    return results


def accounting_report(r: dict[str, Any], sizes: Sizes) -> str:
    """The E2E runs' CPU accounting and floors, per file (medians, seconds)."""
    columns = ("short", "long", "analysis")
    lines = [
        f"\n| E2E accounting (medians) | {sizes.short_seconds:g} s file | "
        f"{sizes.long_seconds:g} s file | {sizes.short_seconds:g} s file, no steps |",
        "|---|---|---|---|",
    ]
    figures = [
        ("bare decoding (`-f null`), wall", "decode_s"),
        ("the server's decoder alone (32-bit PCM into a pipe), wall", "server_decode_s"),
        ("E2E, wall", "e2e_s"),
        ("pass 1: upload to first chunk, wall", "pass1_s"),
        ("pass 2: first chunk to the end, wall", "pass2_s"),
        ("CPU: the server process", "server_cpu_s"),
        ("CPU: its decoder (ffmpeg)", "decoder_cpu_s"),
        ("CPU: the client (upload, Socket.IO)", "client_cpu_s"),
        (f"CPU bound: their sum over {CORES} cores", "cpu_bound_s"),
        ("the finished task's stream replayed to a new client, wall", "replay_s"),
        ("two-pass bound: the server's decoder alone + the replay", "two_pass_bound_s"),
    ]
    ratios = [
        ("E2E over bare decoding", "e2e_over_decode"),
        ("CPU bound over bare decoding", "cpu_bound_over_decode"),
        ("two-pass bound over bare decoding", "two_pass_bound_over_decode"),
    ]
    rows = [(label, key, "{:.2f}") for label, key in figures]
    rows += [(label, key, "{:.2f}x") for label, key in ratios]
    for label, key, form in rows:
        values = [r.get(f"{name}_{key}") for name in columns]
        cells = ["-" if value is None else form.format(value) for value in values]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def measure_catalogue(sizes: Sizes, files: dict[str, Path]) -> dict[str, Any]:
    """Each catalogue entry's E2E on the short file over bare decoding (median, side by side)."""
    path, rows = files["short"], []
    with ServerProcess(workers=CORES) as server:
        for label, pipeline, fmt in CATALOGUE:
            e2e(server, path, pipeline, fmt)  # warm up: a step's first use compiles or imports
            ratios, seconds = [], []
            for _ in range(sizes.runs):
                decode_wall = run_command(decode_command(path))
                seconds.append(e2e(server, path, pipeline, fmt)["seconds"])
                ratios.append(seconds[-1] / decode_wall)
            rows.append({"step": label, "pipeline": pipeline, "format": fmt,
                         "e2e_s": statistics.median(seconds),
                         "over_decode": statistics.median(ratios)})  # fmt: skip
    return {"catalogue": rows}


def measure_latency(sizes: Sizes, files: dict[str, Path]) -> dict[str, Any]:
    with ServerProcess(workers=CORES) as server:
        latency = {
            name: median(
                lambda path=path: e2e(server, path, STREAMING_PIPELINE)["first_chunk"], sizes.runs
            )
            for name, path in files.items()
        }
    return {"first_chunk_short_s": latency["short"], "first_chunk_long_s": latency["long"]}


def measure_memory(files: dict[str, Path]) -> dict[str, Any]:
    peaks = {}
    for name, path in files.items():
        with ServerProcess(workers=CORES) as server:  # a fresh process: its peak is this file's
            e2e(server, path)
            peaks[name] = server.peak_rss_mb()
    return {"rss_short_mb": peaks["short"], "rss_long_mb": peaks["long"]}


def measure_stop(sizes: Sizes, files: dict[str, Path]) -> dict[str, Any]:
    """Stop request to processing_stopped, while 4 other tasks keep the pool busy."""
    latencies = []
    with ServerProcess(workers=CORES, max_active_tasks=8) as server:
        busy, target = Client(server.url), Client(server.url)
        heavy = "highpass=freq=10:order=8,lowpass=freq=12000:order=8,compressor"
        # The busy tasks must outlast every stop measured: a costlier pipeline on the long file.
        busier = f"resample=rate=192000,{heavy}"
        busy_tasks = [busy.upload(files["long"], pipeline=busier, chunk_seconds="0.5")["task_id"]
                      for _ in range(4)]  # fmt: skip
        for _ in range(sizes.stop_repeats):
            task = target.upload(files["short"], pipeline=heavy, chunk_seconds="0.5")["task_id"]
            target.wait_first_chunk(task)
            asked = time.perf_counter()
            requests.post(f"{server.url}/stop-processing", json={"task_id": task}, timeout=30)
            event, _, arrived = target.wait_end(task)
            assert event == "processing_stopped"
            latencies.append(arrived - asked)
        still_busy = end_busy(server, busy_tasks)
        busy.close()
        target.close()
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {"stop_p50_s": statistics.median(latencies), "stop_p95_s": p95,
            "stop_pool_stayed_busy": still_busy}  # fmt: skip


def start_busy(client: Client, path: Path, count: int) -> list[str]:
    """Upload count long tasks with the given client subscribed; return once each has a chunk."""
    tasks = [client.upload(path, pipeline=BUSY_PIPELINE)["task_id"] for _ in range(count)]
    for task in tasks:
        client.wait_first_chunk(task)
    return tasks


def end_busy(server: ServerProcess, tasks: list[str]) -> bool:
    """Delete the long tasks (so the run ends by itself); return whether all were still running."""
    still_busy = all(
        requests.get(f"{server.url}/tasks/{task}", timeout=30).json()["status"] == "processing"
        for task in tasks
    )
    for task in tasks:
        requests.delete(f"{server.url}/tasks/{task}", timeout=30)
    return still_busy


def measure_fairness(sizes: Sizes, files: dict[str, Path]) -> dict[str, Any]:
    """A new task's first chunk and its stop while long tasks process, at the default settings.

    The long tasks have a subscriber of their own that receives all their audio,
    as the new task's does; both pipelines stream (BUSY_PIPELINE). The first
    chunk is timed from the upload's 202 answer, the stop from the client's
    ``stop`` event to its ``processing_stopped``.
    """
    firsts: list[float] = []
    stops: list[float] = []
    with ServerProcess(workers=CORES) as server:
        busy, target = Client(server.url), Client(server.url)
        try:
            busy_tasks = start_busy(busy, files["long"], sizes.busy_tasks)
            for _ in range(sizes.fair_repeats):
                task = target.upload(files["short"], pipeline=BUSY_PIPELINE)["task_id"]
                answered = time.perf_counter()
                firsts.append(target.wait_first_chunk(task) - answered)
                asked = time.perf_counter()
                target.sio.emit("stop", {"task_id": task})
                event, _, arrived = target.wait_end(task)
                assert event == "processing_stopped", event
                stops.append(arrived - asked)
            still_busy = end_busy(server, busy_tasks)
        finally:
            busy.close()
            target.close()
    return {
        "fair_first_chunk_s": statistics.median(firsts),
        "fair_first_chunk_max_s": max(firsts),
        "fair_stop_s": statistics.median(stops),
        "fair_stop_max_s": max(stops),
        "fair_pool_stayed_busy": still_busy,
    }


def measure_capacity(sizes: Sizes, files: dict[str, Path]) -> dict[str, Any]:
    """Memory, threads and open files of the server with many long tasks running at once.

    At the default settings (MAX_ACTIVE_TASKS of them run at once): a quarter
    of the tasks first, then all, each time until every task has emitted
    ``capacity_chunks`` more chunks. Memory per task is the rise of the server's
    peak from a quarter to all, over the tasks added; "growth" is the rise of
    the peak while all of them emit three times as many more,
    which tasks of bounded memory keep small. The decoders (ffmpeg, one per
    running task) are counted apart, by their proportional set size.
    """
    count, quarter, chunks = sizes.capacity_tasks, sizes.capacity_tasks // 4, sizes.capacity_chunks
    tasks: list[str] = []
    with ServerProcess(workers=CORES) as server:
        client = Client(server.url)

        def run_on(added: int, more: int) -> float:
            """Add long tasks; return the server's peak once each has emitted more chunks."""
            tasks.extend(start_busy(client, files["long"], added))
            marks = {task: client.chunk_counts[task] + more for task in tasks}
            for task, mark in marks.items():
                client.wait_chunks(task, mark)
            return server.peak_rss_mb()

        try:
            idle_files = server.open_files()
            peak_quarter = run_on(quarter, chunks)
            peak = run_on(count - quarter, chunks)
            files_open, threads = server.open_files(), server.threads()
            children, children_mb = server.children_memory_mb()
            peak_later = run_on(0, 3 * chunks)
            still_busy = end_busy(server, tasks)
        finally:
            client.close()
    return {
        "capacity_tasks": count,
        "capacity_rss_quarter_mb": peak_quarter,
        "capacity_rss_mb": peak,
        "capacity_rss_later_mb": peak_later,
        "capacity_mb_per_task": (peak - peak_quarter) / (count - quarter),
        "capacity_growth_mb": peak_later - peak,
        "capacity_open_files": files_open,
        "capacity_files_per_task": (files_open - idle_files) / count,
        "capacity_threads": threads,
        "capacity_decoders": children,
        "capacity_decoders_pss_mb": children_mb,
        "capacity_all_running": still_busy and children == count,
    }


def measure_concurrency(sizes: Sizes) -> dict[str, Any]:
    path = make_mp3(sizes.client_seconds)
    with ServerProcess(workers=CORES) as server:
        single = median(lambda: e2e(server, path)["seconds"], sizes.runs)
        times: list[float] = []
        errors: list[str] = []
        start = threading.Barrier(sizes.clients)

        def one_client() -> None:
            try:
                start.wait()
                times.append(e2e(server, path)["seconds"])
            except Exception as error:  # a starved or failed client is a result, not a crash
                errors.append(repr(error))

        began = time.perf_counter()
        threads = [threading.Thread(target=one_client) for _ in range(sizes.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
    audio = sizes.client_seconds
    return {
        "single_throughput_x": audio / single,
        "aggregate_throughput_x": sizes.clients * audio / wall,
        "clients_completed": len(times),
        "clients": sizes.clients,
        "slowest_client_s": max(times, default=float("nan")),
        "client_errors": errors,
    }


def run_batch(url: str, path: Path, count: int) -> dict[str, Any]:
    """Upload count tasks of a file at once, each streamed to a client; time to the last end."""
    client = Client(url)
    try:
        started = time.perf_counter()
        tasks = [client.upload(path, pipeline=PIPELINE)["task_id"] for _ in range(count)]
        ends = [client.wait_end(task) for task in tasks]
        assert all(event == "processing_complete" for event, _, _ in ends), ends
        return {
            "seconds": max(at for _, _, at in ends) - started,
            "audio_s": sum(data["duration"] for _, data, _ in ends),
            "chunks": sum(client.chunk_counts[task] for task in tasks),
            "tasks": tasks,
        }
    finally:
        client.close()


def median_batch(url: str, path: Path, sizes: Sizes) -> dict[str, Any]:
    """One batch to warm up (imports, filter plans), then the median of sizes.runs batches."""
    run_batch(url, path, sizes.cluster_tasks)
    runs = sorted((run_batch(url, path, sizes.cluster_tasks) for _ in range(sizes.runs)),
                  key=lambda batch: batch["seconds"])  # fmt: skip
    return runs[len(runs) // 2]


def cluster_batch(
    redis_server: RedisServer, web: ServerProcess, path: Path, sizes: Sizes, *, workers: int
) -> dict[str, Any]:
    """A batch through the web instance with this many worker processes, and what Redis served."""
    logs = redis_server.log.parent
    processes = [WorkerProcess(redis_url=redis_server.url, data_dir=web.data_dir,
                               log=logs / f"worker-{workers}-{number}.log", workers=CORES,
                               max_active_tasks=CLUSTER_ACTIVE, log_level="WARNING")
                 for number in range(workers)]  # fmt: skip
    try:
        for process in processes:
            process.wait_until_alive(redis_server.client)
        run_batch(web.url, path, sizes.cluster_tasks)  # warm up every worker's first tasks
        runs = []
        for _ in range(sizes.runs):
            before = redis_server.stats()
            batch = run_batch(web.url, path, sizes.cluster_tasks)
            after = redis_server.stats()
            batch["redis"] = {name: after[name] - before.get(name, 0) for name in after}
            keys = [key(task) for task in batch["tasks"] for key in (task_key, log_key)]
            batch["redis"]["kept_bytes"] = redis_server.memory(keys)
            runs.append(batch)
    finally:
        for process in processes:
            process.close()
    runs.sort(key=lambda batch: batch["seconds"])
    return runs[len(runs) // 2]


def measure_cluster(sizes: Sizes, files: dict[str, Path]) -> dict[str, Any]:
    """Throughput of one batch of tasks: the single process, then cluster mode with 1 and 2 workers.

    Every process runs on this machine: the 2 workers share its cores (each
    has CORES threads), so 2 over 1 shows what cluster mode costs more than
    how it scales. Redis's own counts (INFO) give its commands and bytes per
    chunk; the task folders, the bytes the shared folder holds per second of audio.
    """
    path = files["short"]
    with ServerProcess(workers=CORES, max_active_tasks=CLUSTER_ACTIVE) as server:
        single = median_batch(server.url, path, sizes)
    batches: dict[int, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory() as folder,
        RedisServer(Path(folder) / "redis") as redis,
        ServerProcess(Path(folder) / "shared", redis_url=redis.url) as web,
    ):
        for workers in (1, 2):
            batches[workers] = cluster_batch(redis, web, path, sizes, workers=workers)
        results = cluster_figures(single, batches, web.data_dir, path)
    return results


def cluster_figures(
    single: dict[str, Any], batches: dict[int, dict[str, Any]], shared: Path, upload: Path
) -> dict[str, Any]:
    """Throughputs (seconds of audio per second), Redis per chunk, shared-folder bytes."""
    two = batches[2]
    redis = two["redis"]
    chunks, audio = two["chunks"], two["audio_s"]
    results_bytes = sum(folder_bytes(shared / task) for task in two["tasks"])
    snapshot = load_snapshot(shared / two["tasks"][0])
    assert snapshot is not None, "a finished task has its task.json"
    source = snapshot["task"]["input"]
    return {
        "cluster_tasks": len(two["tasks"]),
        "cluster_single_x": single["audio_s"] / single["seconds"],
        "cluster_1_worker_x": batches[1]["audio_s"] / batches[1]["seconds"],
        "cluster_2_workers_x": audio / two["seconds"],
        "cluster_batch_s": [single["seconds"], batches[1]["seconds"], two["seconds"]],
        "cluster_chunks": chunks,
        "cluster_redis_commands_per_chunk": redis["commands"] / chunks,
        "cluster_redis_commands_per_task": redis["commands"] / len(two["tasks"]),
        "cluster_redis_publish_per_chunk": redis.get("publish", 0) / chunks,
        "cluster_redis_xadd_per_chunk": redis.get("xadd", 0) / chunks,
        "cluster_redis_xrange_per_chunk": redis.get("xrange", 0) / chunks,
        "cluster_redis_bytes_per_chunk": redis["net_bytes"] / chunks,
        # What Redis keeps of a finished task (its stream, its JSON) until it is swept.
        "cluster_redis_memory_per_chunk": redis["kept_bytes"] / chunks,
        "cluster_redis_commands_per_s": redis["commands"] / two["seconds"],
        "cluster_redis_publish_per_s": redis.get("publish", 0) / two["seconds"],
        "cluster_chunks_per_s": chunks / two["seconds"],
        "cluster_result_bytes_per_audio_s": results_bytes / audio,
        "cluster_upload_bytes_per_audio_s": len(two["tasks"]) * upload.stat().st_size / audio,
        # Written by the worker and read back once; deleted when the task ends, so not measured.
        "cluster_spool_bytes_per_audio_s": source["sample_rate"]
        * source["channels"]
        * SPOOL_BYTES_PER_SAMPLE,
    }


def cluster_report(r: dict[str, Any]) -> str:
    """The cluster section's details: throughputs, Redis per chunk, the shared folder's bytes."""
    kb = 1000
    return "\n".join([
        f"\ncluster, {r['cluster_tasks']} tasks at once: seconds of audio per second "
        f"{r['cluster_single_x']:.1f} (single process), {r['cluster_1_worker_x']:.1f} (1 worker), "
        f"{r['cluster_2_workers_x']:.1f} (2 workers on the same cores)",
        f"Redis per chunk: {r['cluster_redis_commands_per_chunk']:.1f} commands "
        f"({r['cluster_redis_xadd_per_chunk']:.2f} XADD, "
        f"{r['cluster_redis_publish_per_chunk']:.2f} PUBLISH, "
        f"{r['cluster_redis_xrange_per_chunk']:.2f} XRANGE), "
        f"{r['cluster_redis_bytes_per_chunk'] / kb:.2f} kB in and out, "
        f"{r['cluster_redis_memory_per_chunk']:.0f} bytes kept; "
        f"{r['cluster_redis_commands_per_s']:.0f} commands/s and "
        f"{r['cluster_chunks_per_s']:.0f} chunks/s at 2 workers",
        f"shared folder per second of audio: upload "
        f"{r['cluster_upload_bytes_per_audio_s'] / kb:.0f} kB, spool "
        f"{r['cluster_spool_bytes_per_audio_s'] / kb:.0f} kB (written, read back), "
        f"result and analysis {r['cluster_result_bytes_per_audio_s'] / kb:.0f} kB",
    ])  # fmt: skip


def table(results: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    """The figures, each a ratio with its target (those of the parts that ran)."""

    def row(name: str, value: Any, op: str, target: float) -> tuple[str, Any, str, float]:
        return name, value, op, target

    r = results
    short, long = f"{sizes.short_seconds:g} s", f"{sizes.long_seconds:g} s"
    rows = [
        lambda: row("E2E vs ffmpeg-normalize (x faster)",
                    r["ffmpeg_normalize_s"] / r["e2e_s"], ">=", 20.0),
        lambda: row(f"E2E vs ffmpeg-normalize, {short} file (x faster)",
                    r["short_ffmpeg_normalize_s"] / r["short_e2e_s"], ">=", 20.0),
        lambda: row("audio-server process vs ffmpeg-normalize (x faster)",
                    r["ffmpeg_normalize_s"] / r["local_process_s"], ">=", 5.0),
        lambda: row(f"E2E vs decode floor, {short} file (x slower)",
                    r["short_e2e_over_decode"], "<=", 2.5),
        lambda: row(f"E2E vs decode floor, {long} file (x slower)",
                    r["long_e2e_over_decode"], "<=", 2.5),
        lambda: row(f"Server CPU over decoder CPU, {short} file (x)",
                    r["short_cpu_over_decode_cpu"], "<=", 3.0),
        lambda: row(f"Server CPU over decoder CPU, {long} file (x)",
                    r["long_cpu_over_decode_cpu"], "<=", 3.0),
        lambda: row(f"Scaling: {CORES} workers over 1 (x)", r["e2e_1_worker_s"] / r["e2e_s"],
                    ">=", 0.8 * CORES),
        lambda: row("First chunk, short file (ms)", 1000 * r["first_chunk_short_s"], "<=", 150.0),
        lambda: row("First chunk, long over short (x)",
                    r["first_chunk_long_s"] / r["first_chunk_short_s"], "<=", 1.5),
        lambda: row("Peak RSS, long file (MB)", r["rss_long_mb"], "<=", 300.0),
        lambda: row("Peak RSS, long over short (x)", r["rss_long_mb"] / r["rss_short_mb"],
                    "<=", 1.5),
        lambda: row("Wire bytes over PCM16 (x)", r["wire_ratio"], "<=", 1.15),
        lambda: row("Stop latency p95 (ms)", 1000 * r["stop_p95_s"], "<=", 200.0),
        lambda: row(f"{sizes.clients} clients: aggregate over single (x)",
                    r["aggregate_throughput_x"] / r["single_throughput_x"], ">=", 0.8),
        lambda: row(f"First chunk of a new task, {sizes.busy_tasks} long tasks running (ms)",
                    1000 * r["fair_first_chunk_s"], "<=", 1000.0),
        lambda: row(f"Stop of that task, {sizes.busy_tasks} long tasks running (ms)",
                    1000 * r["fair_stop_s"], "<=", 200.0),
        lambda: row(f"Peak RSS, {sizes.capacity_tasks} long tasks at once (MB)",
                    r["capacity_rss_mb"], "<=", 1000.0),
        lambda: row("Peak RSS per running task (MB)", r["capacity_mb_per_task"], "<=", 20.0),
        lambda: row(f"Open files, {sizes.capacity_tasks} long tasks at once",
                    r["capacity_open_files"], "<=", 512.0),
        lambda: row("Cluster: 2 workers over 1, both on this machine's cores (x)",
                    r["cluster_2_workers_x"] / r["cluster_1_worker_x"], ">=", 0.8),
        lambda: row("Cluster (1 worker) over the single process, same batch (x)",
                    r["cluster_1_worker_x"] / r["cluster_single_x"], ">=", 0.8),
    ]  # fmt: skip
    figures = []
    for make in rows:
        try:
            name, value, op, target = make()
        except KeyError:  # a part that did not run this time
            continue
        met = value >= target if op == ">=" else value <= target
        figures.append({"figure": name, "value": round(value, 3), "target": f"{op} {target:g}",
                        "met": met})  # fmt: skip
    return figures


def sections(sizes: Sizes, files: dict[str, Path]) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each part of the benchmark by name, in the order a full run takes them."""
    return {
        "e2e": lambda: measure_e2e(sizes, files),
        "cpu": lambda: measure_cpu(sizes, files),
        "catalogue": lambda: measure_catalogue(sizes, files),
        "latency": lambda: measure_latency(sizes, files),
        "memory": lambda: measure_memory(files),
        "stop": lambda: measure_stop(sizes, files),
        "concurrency": lambda: measure_concurrency(sizes),
        "fairness": lambda: measure_fairness(sizes, files),
        "capacity": lambda: measure_capacity(sizes, files),
        "cluster": lambda: measure_cluster(sizes, files),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="small files and one run (CI)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument(
        "--only", action="append", metavar="SECTION[,SECTION...]",
        help=f"run only these sections (repeatable, or comma-separated): {', '.join(SECTIONS)}",
    )  # fmt: skip
    args = parser.parse_args(argv)
    chosen = [name.strip() for value in args.only or [",".join(SECTIONS)]
              for name in value.split(",") if name.strip()]  # fmt: skip
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(SECTIONS)}")
    if "cluster" in chosen and find_redis_server() is None:
        if args.only:
            parser.error("the cluster section needs redis-server (apt-get install redis-server)")
        print("no redis-server: the cluster section is left out", file=sys.stderr)
        chosen.remove("cluster")
    sizes = SHORT if args.short else FULL
    files = {"short": make_mp3(sizes.short_seconds), "long": make_mp3(sizes.long_seconds)}
    results: dict[str, Any] = {}
    for name, part in sections(sizes, files).items():
        if name in chosen:
            results.update(part())
    rows = table(results, sizes)
    machine = f"{platform.machine()}, {CORES} cores, {platform.python_version()}"
    report = {"mode": "short" if args.short else "full", "sizes": sizes.__dict__,
              "sections": chosen, "machine": machine, "measurements": results,
              "figures": rows}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"{report['mode']} run on {machine}; files of {sizes.short_seconds:g} and "
          f"{sizes.long_seconds:g} s")  # fmt: skip
    print("| figure | value | target | met |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['figure']} | {row['value']:g} | {row['target']} | "
              f"{'yes' if row['met'] else 'NO'} |")  # fmt: skip
    if "short_cpu_bound_s" in results:
        print(accounting_report(results, sizes))
    if "cluster_tasks" in results:
        print(cluster_report(results))
    if "catalogue" in results:
        print(
            f"\n| step or format ({sizes.short_seconds:g} s file) | E2E (s) | over bare decoding |"
        )
        print("|---|---|---|")
        for entry in results["catalogue"]:
            print(f"| `{entry['step']}` ({entry['format']}) | {entry['e2e_s']:.2f} | "
                  f"{entry['over_decode']:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
