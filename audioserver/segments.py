"""Process pydub segments you already hold, the way the server processes an upload.

    from pydub import AudioSegment
    from audioserver.segments import process_segment

    song = AudioSegment.from_file("song.mp3")
    processed, summary = process_segment(song, "highpass=freq=80,loudness=target=-14")
    processed.export("song_processed.flac", format="flac")
    print(summary["integrated_lufs"], summary["true_peak_db"])

The segment is cut into chunks with pydub (by frame), each chunk goes
through the same stages as on the server (pre-roll, spools between stages,
the summary's meter), and the output is what the server's result file
holds: 16-bit PCM, clipped at full scale. With the same ``chunk_seconds``
the samples are the server's, bit for bit. Chunks are processed one after
another in the calling thread; nothing here needs Flask or a server.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .audio import analysis
from .audio.chunking import Chunk, Spool, segment_chunks, spooled_chunks
from .audio.meter import ChunkMeasure, OutputMeter
from .audio.pcm import AudioSegment
from .audio.pipeline import Pipeline, Stage
from .audio.steps import Block
from .exceptions import ParameterError

__all__ = ["ProcessedChunks", "process_segment", "processed_chunks"]

DEFAULT_CHUNK_SECONDS = 2.0  # the server's default, so results match an upload's by default
OUTPUT_SAMPLE_WIDTH = 2  # 16-bit, as the server's result


class ProcessedChunks(Iterator[AudioSegment]):
    """The processed chunks of one segment, in order, as 16-bit segments.

    ``sample_rate`` and ``channels`` are the output's, known before the first
    chunk; ``summary`` is None until the last chunk has been taken, then the
    server's summary of the output (integrated loudness, true and sample
    peak, loudness range, duration, and what each global step did).
    """

    def __init__(self, segment: AudioSegment, pipeline: Pipeline, *, chunk_seconds: float) -> None:
        self.stages = pipeline.plan(
            segment.frame_rate, segment.channels, output_pre_roll=OutputMeter.pre_roll
        )
        self.sample_rate = self.stages[-1].output_rate
        self.channels = self.stages[-1].output_channels
        self.summary: dict[str, Any] | None = None
        self._meter = OutputMeter(sample_rate=self.sample_rate)
        self._measures: list[ChunkMeasure] = []
        self._chunks = self._run(segment, chunk_seconds)

    def __next__(self) -> AudioSegment:
        return next(self._chunks)

    def close(self) -> None:
        """Stop early: delete the temporary spool now rather than when this is collected."""
        self._chunks.close()

    def _run(
        self, segment: AudioSegment, chunk_seconds: float
    ) -> Generator[AudioSegment, None, None]:
        first = self.stages[0]
        source: Iterator[Chunk] = segment_chunks(
            segment,
            chunk_frames=first.chunk_frames(chunk_seconds),
            pre_roll=first.pre_roll,
            post_roll=first.post_roll,
        )
        previous: Spool | None = None  # the spool the current stage reads
        with contextlib.ExitStack() as cleanup:
            folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="audioserver-")))
            for number, stage in enumerate(self.stages):
                if stage.boundary is None:  # the last stage: its chunks are the output
                    yield from (self._output(stage, stage.run(chunk.block())) for chunk in source)
                    break
                spool = Spool(
                    folder / f"spool-{number}.f32",
                    channels=stage.output_channels,
                    sample_rate=stage.output_rate,
                )
                cleanup.callback(spool.close)
                self._spool(stage, source, spool)
                following = self.stages[number + 1]
                source = spooled_chunks(
                    spool,
                    chunk_frames=following.chunk_frames(chunk_seconds),
                    pre_roll=following.pre_roll,
                    post_roll=following.post_roll,
                )
                if previous is not None:  # read to its end: delete it now
                    previous.close()
                previous = spool
        self.summary = self._summary()

    def _spool(self, stage: Stage, source: Iterator[Chunk], spool: Spool) -> None:
        """Run a stage that ends at a global step: spool its output, measure it, reduce."""
        boundary = stage.boundary
        assert boundary is not None, "only a stage that ends at a global step is spooled"
        measurements = []
        for chunk in source:
            block = stage.run(chunk.block())
            measurements.append(boundary.measure(block))
            spool.write(block.body_start, block.body)
        boundary.reduce(measurements)

    def _output(self, stage: Stage, block: Block) -> AudioSegment:
        """Return an output chunk as the server makes it: clipped, measured, 16-bit."""
        block = block.with_samples(np.clip(block.samples, -1.0, 1.0))
        self._measures.append(self._meter.measure(block, known_loudness=stage.known_loudness()))
        return AudioSegment(
            data=analysis.to_pcm16(block.body),
            sample_width=OUTPUT_SAMPLE_WIDTH,
            frame_rate=block.sample_rate,
            channels=block.channels,
        )

    def _summary(self) -> dict[str, Any]:
        summary = self._meter.summary(self._measures)
        reports = [stage.boundary.report() for stage in self.stages if stage.boundary]
        if reports:
            summary["steps"] = reports
        return summary


def processed_chunks(
    segment: AudioSegment,
    pipeline: str | list[dict[str, Any]] | Pipeline | None = None,
    *,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> ProcessedChunks:
    """Return an iterator over the processed chunks of a segment (16-bit segments, in order).

    pipeline is the server's text or JSON form (None: the server's default,
    ``normalize``; "": no steps) or a ``Pipeline``. A pipeline with a global
    step (normalize, loudness, fade_out) yields its first chunk only after
    the whole segment has gone through the steps before it. Raises
    ParameterError for a bad pipeline, segment or chunk_seconds.
    """
    _check(segment, chunk_seconds)
    if isinstance(pipeline, Pipeline):
        pipeline = pipeline.to_json()  # planning binds the steps: work on a copy of them
    return ProcessedChunks(segment, Pipeline.parse(pipeline), chunk_seconds=chunk_seconds)


def process_segment(
    segment: AudioSegment,
    pipeline: str | list[dict[str, Any]] | Pipeline | None = None,
    *,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> tuple[AudioSegment, dict[str, Any]]:
    """Return the processed segment (16-bit, as the server's result) and its summary.

    The same samples the server's result holds for the same audio and
    chunk_seconds; see ``processed_chunks`` for the arguments.
    """
    chunks = processed_chunks(segment, pipeline, chunk_seconds=chunk_seconds)
    data = b"".join(chunk.raw_data for chunk in chunks)
    processed = AudioSegment(
        data=data,
        sample_width=OUTPUT_SAMPLE_WIDTH,
        frame_rate=chunks.sample_rate,
        channels=chunks.channels,
    )
    assert chunks.summary is not None, "the summary is there once the last chunk is taken"
    return processed, chunks.summary


def _check(segment: Any, chunk_seconds: Any) -> None:
    if not isinstance(segment, AudioSegment):
        raise ParameterError(
            f"segment must be a pydub AudioSegment, got {type(segment).__name__}.",
            parameter="segment",
        )
    if segment.frame_count() == 0:
        raise ParameterError("The segment holds no audio.", parameter="segment")
    if (
        isinstance(chunk_seconds, bool)
        or not isinstance(chunk_seconds, int | float)
        or not math.isfinite(chunk_seconds)
        or chunk_seconds <= 0
    ):
        raise ParameterError(
            f"chunk_seconds must be a positive number of seconds, got {chunk_seconds!r}.",
            parameter="chunk_seconds",
        )
