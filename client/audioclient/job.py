"""One file through the server: upload, chunks into the output as they arrive, the summary."""

from __future__ import annotations

import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import ClientError, ConnectionLost, Server, ServerError
from .connection import Connection
from .progress import ProgressBar, notice, say

UPLOAD_ATTEMPTS = 4
TICK_SECONDS = 0.5  # how often the job looks at a stop request or a lost connection
CONNECT_WAIT_SECONDS = 30.0  # for a (re)connection before an upload
GIVE_UP_SECONDS = 60.0  # without a connection, a job fails
STOP_WAIT_SECONDS = 10.0  # for processing_stopped after a stop


@dataclass(frozen=True, kw_only=True)
class ProcessOptions:
    """What to ask of the server for every file."""

    pipeline: str | None = None
    format: str = "wav"
    chunk_seconds: float | None = None

    def upload_fields(self, *, sid: str) -> dict[str, str]:
        """The upload's form fields; the audio is streamed only when it makes the output."""
        fields = {"sid": sid, "format": self.format, "stream_audio": str(self.format == "wav")}
        if self.pipeline is not None:
            fields["pipeline"] = self.pipeline
        if self.chunk_seconds is not None:
            fields["chunk_seconds"] = repr(self.chunk_seconds)
        return fields


class Job:
    """Processes one file; ``run`` in a thread of its own, ``request_stop`` from any other.

    For ``wav`` the streamed PCM is written to the output as each chunk arrives
    (the ``wave`` module rewrites the header's sizes after every write, so the
    file is a valid WAV at every moment); other formats are downloaded when the
    task ends. ``report`` is the line to print at the end, ``exit_status`` 0 for
    a completed task, 1 otherwise.
    """

    def __init__(
        self,
        path: Path,
        output: Path,
        *,
        options: ProcessOptions,
        server: Server,
        connection: Connection,
        bar: ProgressBar,
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.output = Path(output)
        self.options = options
        self.server = server
        self.connection = connection
        self.bar = bar
        self.task_id = ""
        self.task: dict[str, Any] = {}
        self.report = ""
        self.exit_status = 1
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop_requested = threading.Event()
        self._next_index = 0
        self._asked_again_from = -1
        self._chunks_total: int | None = None
        self._writer: GrowingWav | None = None
        self._output_closed = False
        self._output_touched = False
        self._end: tuple[str, dict[str, Any]] | None = None
        self._progress: dict[str, Any] | None = None  # the latest processing_progress

    @property
    def next_index(self) -> int:
        return self._next_index

    @property
    def streams_audio(self) -> bool:
        return self.options.format == "wav"

    # -- the job's thread ------------------------------------------------------------

    def run(self) -> None:
        """Upload, follow the task to its end, finish the output; never raises."""
        try:
            self._upload()
            self._follow()
            self._finish()
        except ClientError as error:
            self._fail(str(error))
        except Exception as error:  # a bug: still one line, and the other files go on
            self._fail(f"unexpected {type(error).__name__}: {error}")
        finally:
            self.connection.forget(self.task_id)
            self.bar.close()
            self.done.set()

    def request_stop(self) -> None:
        """Ask the job to stop its task (Ctrl-C); the job keeps what it received."""
        self._stop_requested.set()
        self._wake.set()

    def _upload(self) -> None:
        """Upload with this connection's sid; retry after a drop, a stale sid or a busy server."""
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            if self._stop_requested.is_set():
                raise ClientError("interrupted before the upload finished")
            sid = self.connection.wait_connected(timeout=CONNECT_WAIT_SECONDS)
            last = attempt == UPLOAD_ATTEMPTS
            try:
                self.task = self.server.upload(
                    self.path,
                    fields=self.options.upload_fields(sid=sid),
                    on_progress=self.bar.uploading,
                )
                break
            except ConnectionLost as error:
                if last:
                    raise ClientError(f"upload failed: {error}") from error
                notice(f"{self.name}: upload interrupted ({error}); retrying")
            except ServerError as error:
                if error.status == 503 and not last:
                    notice(f"{self.name}: {error.message} Retrying in {error.retry_after:g} s.")
                    self._stop_requested.wait(error.retry_after)
                elif not (error.parameter == "sid" and not last):  # else: reconnected meanwhile
                    raise
        self.task_id = self.task["task_id"]
        self._chunks_total = self.task.get("chunks_total")
        duration = self.task.get("duration")
        say(
            f"{self.name}: task {self.task_id} ({'?' if duration is None else f'{duration:.1f}'} "
            f"s of audio, {self._chunks_total or '?'} chunks)"
        )
        self.connection.watch(self, subscribed_as=sid)

    def _follow(self) -> None:
        """Wait for the task's end, drawing progress; stop it if asked; give up without a link."""
        stop_sent_at: float | None = None
        while self._end is None:
            if self._stop_requested.is_set() and stop_sent_at is None:
                self._send_stop()
                stop_sent_at = time.monotonic()
            if stop_sent_at is not None and time.monotonic() - stop_sent_at > STOP_WAIT_SECONDS:
                notice(f"{self.name}: the server did not confirm the stop; keeping what arrived")
                return
            if self.connection.seconds_disconnected() > GIVE_UP_SECONDS:
                raise ClientError(
                    f"lost the connection to {self.server.url} and could not reconnect "
                    f"in {GIVE_UP_SECONDS:.0f} s (task {self.task_id} goes on there)"
                )
            self._show_progress()
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()

    def _send_stop(self) -> None:
        """Stop the task: the ``stop`` event, or POST /stop-processing if the socket is down."""
        ack = self.connection.stop(self.task_id)
        if ack is not None and (ack.get("ok") or ack.get("error") == "task_finished"):
            return
        try:
            self.server.stop(self.task_id)
        except ServerError as error:
            if error.status != 409:  # 409: it finished first, and its end is on its way
                notice(f"{self.name}: could not stop task {self.task_id}: {error}")
        except ClientError as error:
            notice(f"{self.name}: could not stop task {self.task_id}: {error}")

    def _show_progress(self) -> None:
        """Draw the bar from the latest processing_progress: the server sends a few a second."""
        progress = self._progress
        if not self.bar.enabled or progress is None:
            return
        elapsed = progress["elapsed"]
        done_seconds = (progress["duration"] or 0) * progress["progress"]
        if progress["stage"] == progress["stages"] - 1:  # the stage that emits the chunks
            self._chunks_total = progress["chunks_total"] or self._chunks_total
        self.bar.show(
            fraction=progress["progress"],
            realtime_factor=done_seconds / elapsed if elapsed > 0 else None,
            chunks=self._next_index,
            chunks_total=self._chunks_total,
        )

    def _finish(self) -> None:
        """Close or download the output and set the report, by how the task ended."""
        event, data = self._end or ("no_answer", {})
        self.close_output(create_empty=event != "processing_error")
        if event == "processing_error":
            raise ClientError(f"processing failed: {data['message']} ({data['error']})")
        if not self.streams_audio and (event == "processing_complete" or self._next_index):
            self._output_touched = True
            self.server.download_result(
                self.task_id, self.output, on_retry=lambda text: notice(f"{self.name}: {text}")
            )
        if event == "processing_complete":
            if self.streams_audio and self._next_index != data["chunks"]:
                raise ClientError(f"got {self._next_index} of {data['chunks']} chunks")
            self.bar.show(
                fraction=1.0,
                realtime_factor=data.get("realtime_factor"),
                chunks=data["chunks"],
                chunks_total=data["chunks"],
            )
            self.report = completed_report(self.name, self.output, data)
            self.exit_status = 0
            return
        if self._stop_requested.is_set():
            why = "stopped"
        else:
            why = f"stopped on the server ({data.get('reason', 'no reason given')})"
        kept = f"partial output kept in {self.output}" if self._output_touched else "no output"
        self.report = (
            f"{self.name}: {why} after {self._next_index} of {self._chunks_total or '?'} "
            f"chunks; {kept}"
        )

    def _fail(self, reason: str) -> None:
        self.close_output(create_empty=False)
        kept = self._output_touched and self.output.exists()
        self.report = f"{self.name}: {reason}" + (
            f" (partial output kept in {self.output})" if kept else ""
        )
        self.exit_status = 1

    # -- the connection's read loop ----------------------------------------------------

    def on_chunk(self, chunk: dict[str, Any]) -> bool:
        """Write the next chunk; ignore one already written; return False on a new gap."""
        with self._lock:
            index = chunk["index"]
            if index < self._next_index or self._output_closed:
                return True
            if index > self._next_index:  # never seen; ask again, once per missing chunk
                asked, self._asked_again_from = self._asked_again_from, self._next_index
                return asked == self._next_index
            if self.streams_audio:
                self._write(chunk)
            self._next_index += 1
            self._chunks_total = chunk["chunks_total"]
        return True

    def on_progress(self, progress: dict[str, Any]) -> None:
        self._progress = progress
        self._wake.set()

    def on_end(self, event: str, data: dict[str, Any]) -> None:
        self._end = (event, data)
        self._wake.set()

    def on_refused(self, ack: dict[str, Any]) -> None:
        message = ack.get("message", "refused")
        self._end = ("processing_error", {"message": message, "error": ack.get("error", "")})
        self._wake.set()

    # -- the output --------------------------------------------------------------------

    def _write(self, chunk: dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = self._open_wav(chunk["sample_rate"], chunk["channels"])
        self._writer.append(chunk["audio"])

    def _open_wav(self, sample_rate: int, channels: int) -> GrowingWav:
        self._output_touched = True
        return GrowingWav(self.output, sample_rate=sample_rate, channels=channels)

    def close_output(self, *, create_empty: bool) -> None:
        """Finish the WAV (an empty one if asked and no chunk came); write no chunk after this."""
        with self._lock:
            if self._output_closed:
                return
            self._output_closed = True
            if not self.streams_audio:
                return
            if self._writer is None and create_empty and self.task:
                self._writer = self._open_wav(self.task["sample_rate"], self.task["channels"])
            if self._writer is not None:
                self._writer.close()


class GrowingWav:
    """A 16-bit PCM WAV file written chunk by chunk, complete and valid after every chunk."""

    def __init__(self, path: Path, *, sample_rate: int, channels: int) -> None:
        self._file = open(path, "wb")  # noqa: SIM115  (closed by close)
        self._wav = wave.open(self._file, "wb")  # noqa: SIM115
        self._wav.setnchannels(channels)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)

    def append(self, pcm: bytes) -> None:
        """Add interleaved 16-bit PCM: the ``wave`` module then rewrites the header's sizes."""
        self._wav.writeframes(pcm)
        self._file.flush()

    def close(self) -> None:
        self._wav.close()
        self._file.close()


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
