"""The benchmark runs (short mode, small files) so it cannot rot; its targets are judged elsewhere.

The full run (bench/run.py without --short) is what the README's Performance
table comes from; here only that every figure gets measured is checked.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from helpers import ROOT

from bench.harness import find_redis_server


@pytest.mark.slow
def test_the_benchmark_measures_every_figure(tmp_path):
    report_path = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--short", "--json", str(report_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["mode"] == "short"
    figures = {row["figure"]: row for row in report["figures"]}
    # The cluster section's two run where redis-server is installed (./test.sh installs it).
    cluster = find_redis_server() is not None
    assert len(figures) == 20 + 2 * cluster
    assert "audio-server process vs ffmpeg-normalize (x faster)" in figures
    assert "First chunk of a new task, 4 long tasks running (ms)" in figures
    assert "Peak RSS per running task (MB)" in figures
    assert "Server CPU over decoder CPU, 60 s file (x)" in figures
    for row in figures.values():
        assert math.isfinite(row["value"]) and row["value"] > 0, row
    measured = report["measurements"]
    assert measured["local_process_s"] > 0
    assert measured["clients_completed"] == measured["clients"] and not measured["client_errors"]
    assert measured["audio_complete"] == 1.0  # the client received every byte of audio
    assert measured["stop_pool_stayed_busy"] is True
    # The capacity section read the server while tasks ran, each with its decoder (with the
    # short run's 60-second files, the first may have ended by then).
    assert measured["capacity_tasks"] == 8 and 1 <= measured["capacity_decoders"] <= 8
    assert "| figure | value | target | met |" in result.stdout
    catalogue = {(entry["pipeline"], entry["format"]) for entry in measured["catalogue"]}
    assert ("", "opus") in catalogue and ("compressor", "wav") in catalogue
    assert all(entry["over_decode"] > 0 for entry in measured["catalogue"])
    assert measured["short_server_cpu_s"] > 0 and measured["long_decode_cpu_s"] > 0
    # The E2E accounting: the decoder's and the client's CPU, the two floors, the no-steps job.
    for name in ("short", "long", "analysis"):
        assert measured[f"{name}_decoder_cpu_s"] > 0 and measured[f"{name}_client_cpu_s"] > 0
        assert 0 < measured[f"{name}_pass1_s"] < measured[f"{name}_e2e_s"]
        assert measured[f"{name}_replay_s"] > 0 and measured[f"{name}_cpu_bound_over_decode"] > 0
    assert "| E2E accounting (medians) |" in result.stdout
    if cluster:
        assert "Cluster: 2 workers over 1, both on this machine's cores (x)" in figures
        assert measured["cluster_tasks"] == 8 and measured["cluster_chunks"] >= 8 * 10
        assert measured["cluster_redis_xadd_per_chunk"] >= 1, "one stream entry a chunk at least"
        assert measured["cluster_result_bytes_per_audio_s"] > 44100 * 2 * 2  # the WAV, and more
