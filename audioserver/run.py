"""TaskRun: one running task, the only code that changes its state and writes its output.

A run decodes the upload, cuts it into jobs of whole chunks, hands them to
the shared pool (through the ``Runner``, fairly between tasks), puts the
processed chunks back in order, appends them to the task's chunk log (which
wakes its subscribers' cursors) and ends the log with the terminal event. It
owns the task's decoder, encoder and spools, closed by one ``ExitStack``.

The feeding thread never holds more than the task's window of jobs in
flight, so memory stays bounded whatever the file's length; workers check
the stop flag before and after each job. A task ends exactly once
(``_end``), from whichever thread gets there first: the feeding thread at
the end, a worker whose chunk failed, or a stop.

``Runner`` is the seam: where a task runs. ``PoolRunner`` is this process's
``ThreadPoolExecutor`` behind a ``FairQueue``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from .audio import analysis
from .audio.chunking import Chunk, Spool, decoded_chunks, spooled_chunks
from .audio.decode import Decoder
from .audio.encoders import FORMATS, EncodeError, StreamEncoder
from .audio.pipeline import Stage
from .audio.steps import Block
from .delivery import Delivery
from .exceptions import AudioServerError, DecodeError, PayloadTooLarge
from .messages import TerminalCore
from .storage import remove_folder, save_snapshot
from .task import TERMINAL, ChunkOutput, FairQueue, Status, Task, now

UPLOAD_NAME = "upload"
TRUNCATED_FRACTION = 0.9  # decoded audio shorter than this part of the announced length
PROGRESS_SECONDS = 0.25  # processing_progress: at most 4 a second per task, plus one per stage end


class Runner(Protocol):
    """Where tasks run: a thread that feeds each, and a shared pool for their jobs."""

    def start(self, name: str, target: Callable[[], None]) -> None:
        """Run a task's feeding loop."""
        ...

    def submit(self, key: str, job: Callable[[], None]) -> None:
        """Run one job of task key on the pool, fairly between tasks."""
        ...

    def forget(self, key: str) -> None:
        """Task key has no job queued or running any more."""
        ...

    def shutdown(self) -> None: ...


class PoolRunner:
    """This process's pool: one ThreadPoolExecutor; a free worker takes the fairest job."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="worker")
        self.fair = FairQueue()  # which task's job a free worker takes next

    def start(self, name: str, target: Callable[[], None]) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    def submit(self, key: str, job: Callable[[], None]) -> None:
        self.fair.put(key, job)
        self._pool.submit(self.fair.run_next)

    def forget(self, key: str) -> None:
        self.fair.forget(key)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Observer(Protocol):
    """Where the engine reports what it did, for metrics."""

    def task_ended(self, outcome: str) -> None: ...
    def chunk_processed(self, seconds: float) -> None: ...
    def chunk_emitted(self, *, audio_seconds: float, audio_bytes: int) -> None: ...


class NullObserver:
    """An observer that keeps nothing."""

    def task_ended(self, outcome: str) -> None:
        pass

    def chunk_processed(self, seconds: float) -> None:
        pass

    def chunk_emitted(self, *, audio_seconds: float, audio_bytes: int) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """What every run shares: the pool, the clients, the limits, and the scheduler's hooks."""

    runner: Runner
    delivery: Delivery
    observer: Observer
    ffmpeg: str
    workers: int
    max_audio_seconds: float
    max_audio_samples: int
    stall_seconds: float
    too_much_audio: Callable[[Any], str]
    on_end: Callable[[Task], None]  # the task reached its terminal state: free its slot
    on_retired: Callable[[Task], None]  # nothing of the task runs any more


class TaskRun:
    """Runs one task from its upload to its terminal event (see the module docstring)."""

    def __init__(self, task: Task, context: RunContext) -> None:
        self.task = task
        self.context = context

    # -- the feeding thread -------------------------------------------------------------

    def open_decoder(self) -> Decoder:
        return Decoder(
            self.task.folder / UPLOAD_NAME,
            ffmpeg=self.context.ffmpeg,
            max_seconds=self.context.max_audio_seconds,
            stall_seconds=self.context.stall_seconds,
        )

    def start(self) -> None:
        """Begin processing (the scheduler admitted the task)."""
        task = self.task
        with task.lock:
            task.status = Status.PROCESSING
            task.started_at = now()
        self.context.runner.start(f"task-{task.id[:8]}", self.run)

    def run(self) -> None:
        task = self.task
        task.log.info("started")
        try:
            self.save_unfinished()
            if task.decoder is None:
                task.decoder = self.open_decoder()
            self._start_encoder()
            if self._run_stages():
                self._finish_encoding()
                self._complete()
        except DecodeError as error:
            self.fail("decode_failed", error.message)
        except AudioServerError as error:  # a limit crossed while decoding
            self.fail(error.code, error.message)
        except Exception as error:  # a bug or a failing step: this task fails, the pool goes on
            task.log.exception("processing failed")
            self.fail("processing_failed", f"Processing failed: {error}")
        finally:
            self.retire()

    def save_unfinished(self) -> None:
        """Write task.json of a task that has not ended, so a crash cannot make it vanish."""
        task = self.task
        with task.lock:
            if task.status not in TERMINAL and not task.deleted:
                save_snapshot(task.folder, task.snapshot(workers=self.context.workers))

    def _start_encoder(self) -> None:
        """Start encoding the result as it grows, for formats other than WAV."""
        task = self.task
        spec = FORMATS[task.options.format]
        if not spec.needs_encoder:
            return
        last = task.stages[-1]
        task.encoder = StreamEncoder(
            task.store.path,
            task.folder / f"result.{spec.extension}",
            format=spec.name,
            sample_rate=last.output_rate,
            channels=last.output_channels,
            ffmpeg=self.context.ffmpeg,
        )

    def _finish_encoding(self) -> None:
        """End the encoding of the result; if it fails, the WAV is the result, with a warning."""
        task = self.task
        if task.encoder is None:
            return
        try:
            task.result_path = task.encoder.finish()
        except EncodeError as error:
            task.result_path = task.store.path
            fmt = task.options.format
            message = (
                f"{error}. The result is the 16-bit WAV instead (all of the processed audio); "
                f"convert it yourself, or process the file again with format={fmt}."
            )
            with task.lock:
                task.warnings.append(
                    {"warning": "encode_failed", "format": fmt, "message": message}
                )
            task.log.warning("%s", message)

    def _bounded(self, source: Iterator[Chunk]) -> Iterator[Chunk]:
        """Pass the decoded chunks on, failing the task once they exceed max_audio_samples."""
        task = self.task
        decoder, info = task.decoder, task.info
        limit = self.context.max_audio_samples // info.channels
        for chunk in source:
            if decoder is not None and decoder.frames_read > limit:
                decoder.kill()
                raise PayloadTooLarge(self.context.too_much_audio(info), code="too_much_audio")
            yield chunk

    def _run_stages(self) -> bool:
        """Run every stage; return True if the task ran to the end."""
        task = self.task
        first = task.stages[0]
        assert task.decoder is not None, "a running task has its decoder"
        source: Iterator[Chunk] = self._bounded(
            decoded_chunks(
                task.decoder,
                chunk_frames=task.job_frames(0),
                pre_roll=first.pre_roll,
                post_roll=first.post_roll,
            )
        )
        spool: Spool | None = None
        with contextlib.ExitStack() as spools:
            for number, stage in enumerate(task.stages):
                last = number == len(task.stages) - 1
                previous, spool = spool, None
                if not last:
                    spool = Spool(
                        task.folder / f"spool-{number}.f32",
                        channels=stage.output_channels,
                        sample_rate=stage.output_rate,
                    )
                    # On the way out: no job of the task runs before a spool it writes closes.
                    spools.callback(spool.close)
                    spools.callback(task.jobs.wait_idle)
                measurements: dict[int, Any] = {}
                count = self._map_stage(number, source, spool, measurements)
                if previous is not None:
                    previous.close()  # its every job has read it (closing twice is nothing)
                if count is None:
                    return False
                with task.lock:
                    self._progress(stage, stage_end=True)
                if not last:
                    assert stage.boundary is not None and spool is not None, "not the last stage"
                    stage.boundary.reduce([measurements[index] for index in range(count)])
                    task.log.info("stage %d measured: %s", number, stage.boundary.report())
                    following = task.stages[number + 1]
                    source = spooled_chunks(
                        spool,
                        chunk_frames=task.job_frames(number + 1),
                        pre_roll=following.pre_roll,
                        post_roll=following.post_roll,
                    )
            return True

    def _map_stage(
        self,
        number: int,
        source: Iterator[Chunk],
        spool: Spool | None,
        measurements: dict[int, Any],
    ) -> int | None:
        """Submit every job of a stage and wait for all; return their count, None if stopped."""
        task = self.task
        stage = task.stages[number]
        chunk_frames = task.chunk_frames(number)
        jobs = chunks = 0
        for job in source:
            if not task.window.acquire():
                return None
            task.jobs.add()
            self.context.runner.submit(
                task.id,
                functools.partial(self._process, stage, job, spool, measurements, chunk_frames),
            )
            jobs += 1
            chunks += -(-job.body_frames // chunk_frames)
        self._source_ended(stage, chunks, last=spool is None)
        if not task.window.drain():
            return None
        return jobs

    def _source_ended(self, stage: Stage, chunks: int, *, last: bool) -> None:
        """Record what the end of a stage's input tells: the exact duration, the chunk count."""
        task = self.task
        with task.lock:
            if stage is task.stages[0]:
                assert task.decoder is not None, "a running task has its decoder"
                task.duration = task.decoder.frames_read / task.info.sample_rate
                self._check_length()
                self._check_silenced()
            if last:
                task.chunks_final = chunks

    def _check_silenced(self) -> None:
        """Warn when the decoder replaced samples that were not numbers (a broken float file)."""
        task = self.task
        count = task.decoder.silenced if task.decoder is not None else 0
        if count:
            message = (
                f"{count} samples of the file were not finite numbers (NaN or infinity) or "
                "were beyond +24 dBFS; they were replaced by silence. The file is probably "
                "damaged, or was written by a program with a bug."
            )
            task.warnings.append({"warning": "not_finite", "message": message})
            task.log.warning("%s", message)

    def _check_length(self) -> None:
        """Warn when the audio ended well before its header said (a truncated file)."""
        task = self.task
        announced = task.info.duration
        assert task.duration is not None, "the decoder has come to the end"
        if announced and task.duration < TRUNCATED_FRACTION * announced:
            message = (
                f"The file ends after {task.duration:.1f} s, though its header announces "
                f"{announced:.1f} s: it is probably truncated. The result has what decoded."
            )
            task.warnings.append({"warning": "truncated", "message": message})
            task.log.warning("%s", message)

    # -- the pool's workers -------------------------------------------------------------

    def _process(
        self,
        stage: Stage,
        chunk: Chunk,
        spool: Spool | None,
        measurements: dict[int, Any],
        chunk_frames: int,
    ) -> None:
        """Process one job (one or more consecutive chunks, see Stage.chunks_per_job)."""
        task = self.task
        observer = self.context.observer
        try:
            if task.stopping.is_set():
                task.window.release()  # dropped: a stopped task never holds a worker
                return
            started = time.perf_counter()
            source = chunk.block()  # the chunk's pydub segment, as float64 samples
            block = stage.run(source)
            if task.stopping.is_set():
                # Stopped while this chunk ran: drop it here, before any analysis,
                # encoding or storing (the stop flag is the worker's to check).
                task.window.release()
                return
            if spool is not None:
                assert stage.boundary is not None, "a spooled stage ends at a global step"
                measurements[chunk.index] = stage.boundary.measure(block)
                spool.write(block.body_start, block.body)
                observer.chunk_processed(time.perf_counter() - started)
                with task.lock:
                    chunks = -(-len(source.body) // chunk_frames)
                    task.work_done += chunks
                    self._progress(stage, count=chunks)
                task.window.release()
            else:
                first = chunk.index * stage.chunks_per_job(chunk_frames)
                parts = list(_split(block, chunk_frames * stage.output_rate // stage.input_rate))
                share = (time.perf_counter() - started) / len(parts)  # of the steps' time
                outputs = []
                for number, part in enumerate(parts):
                    output = self._finish_chunk(first + number, part, time.perf_counter() - share)
                    observer.chunk_processed(output.meta["processing_ms"] / 1000)
                    # The job's window slot is freed with its last chunk.
                    outputs.append(replace(output, ends_job=number == len(parts) - 1))
                self._append(outputs)
        except Exception as error:
            task.log.exception("chunk %d failed", chunk.index)
            self.fail("processing_failed", f"Chunk {chunk.index} failed: {error}")
        finally:
            task.jobs.done()

    def _finish_chunk(self, index: int, block: Block, started: float) -> ChunkOutput:
        """Return the analysis, 16-bit PCM and summary measure of a processed chunk."""
        task = self.task
        rate = block.sample_rate
        chunk = analysis.analyse_chunk(block, meter=task.meter, stage=task.stages[-1])
        meta = {
            "task_id": task.id,
            "index": index,
            "start": block.body_start / rate,
            "duration": chunk.frames / rate,
            "sample_rate": rate,
            "channels": block.channels,
            "peak_db": chunk.peak_db,
            "rms_db": chunk.rms_db,
            "waveform": chunk.waveform,
            "spectrum": chunk.spectrum,
            "encoding": "pcm_s16le",
            "frames": chunk.frames,
            "waveform_first": chunk.waveform_first,
        }
        measure, pcm = chunk.measure, chunk.pcm
        meta["processing_ms"] = round((time.perf_counter() - started) * 1000, 2)
        meta["worker"] = threading.current_thread().name
        return ChunkOutput(meta, pcm, measure)

    def _append(self, outputs: list[ChunkOutput]) -> None:
        """Put a job's chunks in the reorder buffer; append every chunk now in order to the log."""
        task = self.task
        with task.lock:
            if task.status in TERMINAL:
                task.window.release()
                return
            for output in outputs:
                task.reorder[output.meta["index"]] = output
            while task.next_index in task.reorder:
                ready = task.reorder.pop(task.next_index)
                task.chunk_log.append(ready.meta, ready.pcm)
                if task.encoder is not None:
                    task.encoder.advance(task.store.wav.data_bytes)
                task.measures.append(ready.measure)
                task.output_frames += ready.meta["frames"]
                self.context.observer.chunk_emitted(
                    audio_seconds=ready.meta["duration"],
                    audio_bytes=len(ready.pcm) if task.options.stream_audio else 0,
                )
                task.next_index += 1
                task.work_done += 1
                if ready.ends_job:
                    task.window.release()
                self._progress(task.stages[-1], done=task.next_index)

    def _progress(
        self, stage: Stage, *, count: int = 1, done: int | None = None, stage_end: bool = False
    ) -> None:
        """Count chunks done in a stage and tell the subscribers (called under the task's lock).

        processing_progress goes out at most every PROGRESS_SECONDS, and once
        more when a stage ends; never after the terminal event. ``done`` is the
        stage's count when the caller has it (the last stage's: the chunks emitted).
        """
        task = self.task
        if task.status in TERMINAL:
            return
        number = next(n for n, candidate in enumerate(task.stages) if candidate is stage)
        if done is not None:
            task.stage_done[number] = done
        elif not stage_end:
            task.stage_done[number] += count
        moment = time.monotonic()
        if not stage_end and moment - task.progress_sent < PROGRESS_SECONDS:
            return
        task.progress_sent = moment
        chunks_done = task.stage_done[number]
        self.context.delivery.progress(
            task,
            {
                "task_id": task.id,
                "stage": number,
                "stages": len(task.stages),
                "chunks_done": chunks_done,
                "chunks_total": chunks_done if stage_end else task.stage_chunks_total(number),
                "progress": round(task.progress, 4),
                "chunks_emitted": task.next_index,
                "duration": task.duration,
                "elapsed": round(task.elapsed, 3),
            },
            stage_end=stage_end,
        )

    # -- ending -------------------------------------------------------------------------

    def _end(self, status: Status, event: str, describe: Callable[[], dict[str, Any]]) -> bool:
        """Move the task to a terminal status and end its log; False if it had ended.

        describe() builds the event's own fields under the task's lock, after
        the last chunk: the counts it reports are final. If describe() itself
        fails (a summary that cannot be computed, say), the task fails instead:
        every task reaches exactly one terminal state, and says so.
        """
        task = self.task
        with task.lock:
            if task.status in TERMINAL:
                return False
            task.finished_at = now()
            task.stopping.set()
            task.reorder.clear()
            try:
                task.chunk_log.finalize()
                data = describe()
            except Exception as error:
                task.log.exception("ending the task as %s failed", status)
                status, event = Status.FAILED, "processing_error"
                task.summary = None
                task.error = {"error": "processing_failed", "message": f"Finishing failed: {error}"}
                data = dict(task.error)
            task.status = status
            if task.encoder is None and status != Status.FAILED and not task.deleted:
                task.result_path = task.store.path
            data = {**terminal_core(task, status), **data}
            task.chunk_log.end(event, data)
            self.context.delivery.ended(task)
            self.context.observer.task_ended(str(status))
        task.window.cancel()
        if task.decoder is not None:
            task.decoder.kill()
        self.context.on_end(task)
        return True

    def _complete(self) -> None:
        task = self.task

        def describe() -> dict[str, Any]:
            task.duration = task.output_frames / task.stages[-1].output_rate
            task.summary = summary(task)
            elapsed = task.elapsed
            return {
                "chunks": task.next_index,
                "realtime_factor": round(task.duration / elapsed, 2) if elapsed > 0 else None,
            }

        if self._end(Status.COMPLETED, "processing_complete", describe):
            assert task.terminal is not None, "_end() sets it"
            event, data = task.terminal
            if event == "processing_complete":
                task.log.info(
                    "completed: %d chunks, %.1f s of audio in %.2f s (%sx realtime)",
                    data["chunks"], data["duration"], data["elapsed"], data["realtime_factor"],
                )  # fmt: skip

    def fail(self, code: str, message: str) -> None:
        task = self.task

        def describe() -> dict[str, Any]:
            task.error = {"error": code, "message": message}
            return {"error": code, "message": message}

        if self._end(Status.FAILED, "processing_error", describe):
            task.log.warning("failed: %s", message)

    def stop(self, reason: str) -> bool:
        """Stop the task now (it has not ended); False if it ended meanwhile."""
        task = self.task
        with task.lock:
            queued = task.status == Status.QUEUED

        def describe() -> dict[str, Any]:
            if reason == "deleted":
                task.deleted = True  # no result to point at: the files go with the task
            elif task.next_index:  # the summary (its duration too) of what was emitted
                task.summary = summary(task)
            return {"reason": reason}

        if not self._end(Status.STOPPED, "processing_stopped", describe):
            return False
        task.log.info("stopped (%s) after %d chunks", reason, task.next_index)
        if queued:
            self.retire()
        return True

    def retire(self) -> None:
        """Release what the task no longer needs once no job runs: decoder, encoder, upload."""
        task = self.task
        task.jobs.wait_idle()
        self.context.runner.forget(task.id)
        with contextlib.ExitStack() as resources:
            if task.decoder is not None:
                resources.callback(task.decoder.close)
            if task.encoder is not None and task.result_path is None:
                resources.callback(self._settle_encoder)
        (task.folder / UPLOAD_NAME).unlink(missing_ok=True)
        with task.lock:
            task.runner_done = True
            deleted = task.deleted
            if not deleted and task.status in TERMINAL:
                save_snapshot(task.folder, task.snapshot(workers=self.context.workers))
        if deleted:
            remove_folder(task.folder)
        self.context.on_retired(task)
        task.retired.set()

    def _settle_encoder(self) -> None:
        """Encode a stopped task's partial result; drop a failed or deleted one's."""
        task = self.task
        assert task.encoder is not None, "only a task with an encoder has one to settle"
        with task.lock:
            keep = task.status == Status.STOPPED and not task.deleted
        if not keep:
            task.encoder.abort()
            return
        self._finish_encoding()


TERMINAL_STATUS: dict[Status, Literal["completed", "stopped", "failed"]] = {
    Status.COMPLETED: "completed",
    Status.STOPPED: "stopped",
    Status.FAILED: "failed",
}


def terminal_core(task: Task, status: Status) -> TerminalCore:
    """The fields every terminal event carries, whatever the ending (called under the lock).

    ``duration`` is the audio emitted (the result's length), ``summary`` and
    ``result_url`` are null where the task has none.
    """
    has_result = (
        status == Status.COMPLETED
        or (status == Status.STOPPED and not task.deleted)
        or task.result_path is not None  # a failed task that kept a partial result
    )
    return {
        "task_id": task.id,
        "status": TERMINAL_STATUS[status],
        "chunks_emitted": task.next_index,
        "duration": task.output_frames / task.stages[-1].output_rate,
        "elapsed": round(task.elapsed, 3),
        "summary": task.summary,
        "result_url": f"/tasks/{task.id}/result" if has_result else None,
        "warnings": task.warnings,
    }


def summary(task: Task) -> dict[str, Any]:
    """The loudness summary of what a task emitted, with what each global step measured."""
    result = task.meter.summary(task.measures)
    reports = [stage.boundary.report() for stage in task.stages if stage.boundary]
    if reports:
        result["steps"] = reports
    return result


def _split(block: Block, frames: int) -> Iterator[Block]:
    """Cut a job's output into its chunks of frames each, each with the pre-roll it carries.

    Stage.run leaves a job's output with the pre-roll the output meter needs;
    each chunk gets as much of what comes before it (that pre-roll, then the
    chunks before it in the job).
    """
    keep = block.pre
    body_end = len(block.samples) - block.post
    for start in range(block.pre, body_end, frames):
        end = min(start + frames, body_end)
        first = max(0, start - keep)
        yield Block(
            block.samples[first:end],
            block.sample_rate,
            block.start + first,
            start - first,
            0,
            block.final and end == body_end,
        )
