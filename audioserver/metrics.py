"""Prometheus metrics for GET /metrics: tasks, queue, chunk timings, audio and bytes emitted.

Each app has its own registry (tests build many apps in one process). The
engine reports through the small observer interface below; the queue and
active-task gauges are read from the engine when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
CHUNK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _EngineGauges:
    """Reads the engine's queue depth and active tasks at each scrape."""

    def __init__(self, health: Callable[[], Mapping[str, Any]]) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        health = self._health()
        yield GaugeMetricFamily(
            "audioserver_active_tasks", "Tasks being processed now.", value=health["active_tasks"]
        )
        yield GaugeMetricFamily(
            "audioserver_queued_tasks",
            "Tasks waiting for a processing slot (the queue depth).",
            value=health["queued_tasks"],
        )
        yield GaugeMetricFamily(
            "audioserver_workers", "Threads in the processing pool.", value=health["workers"]
        )


class Metrics:
    """The server's metrics; the engine calls task_ended, chunk_processed and chunk_emitted."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._tasks = Counter(
            "audioserver_tasks", "Tasks that ended, by outcome.", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self._chunk_seconds = Histogram(
            "audioserver_chunk_processing_seconds",
            "Time a worker spent on one chunk of one stage.",
            buckets=CHUNK_BUCKETS,
            registry=self.registry,
        )
        self._audio_seconds = Counter(
            "audioserver_audio_processed_seconds",
            "Seconds of processed audio emitted.",
            registry=self.registry,
        )
        self._bytes = Counter(
            "audioserver_emitted_audio_bytes",
            "Bytes of audio sent in audio_chunk events (live and replayed), per event.",
            registry=self.registry,
        )
        self._errors = Counter(
            "audioserver_http_errors", "Error answers, by status and code.", ["status", "error"],
            registry=self.registry,
        )  # fmt: skip
        for outcome in ("completed", "stopped", "failed"):
            self._tasks.labels(outcome)  # exported at 0 before the first one

    def watch_engine(self, health: Callable[[], Mapping[str, Any]]) -> None:
        """Export the engine's gauges, read at each scrape."""
        self.registry.register(_EngineGauges(health))

    def task_ended(self, outcome: str) -> None:
        self._tasks.labels(outcome).inc()

    def chunk_processed(self, seconds: float) -> None:
        self._chunk_seconds.observe(seconds)

    def chunk_emitted(self, *, audio_seconds: float, audio_bytes: int) -> None:
        self._audio_seconds.inc(audio_seconds)
        self._bytes.inc(audio_bytes)

    def error_answered(self, status: int, code: str) -> None:
        self._errors.labels(str(status), code).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
