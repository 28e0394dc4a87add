"""Streaming encode: ffmpeg turns a task's growing PCM WAV into FLAC, MP3, Ogg Vorbis or Opus.

A task's result is always written as 16-bit PCM WAV (``encode.WavWriter``);
a user who asks for another format gets a ``StreamEncoder`` beside it::

    emitter (holds the task's lock)        worker thread              ffmpeg
    WavWriter.append(pcm)
    encoder.advance(writer.data_bytes) --> pread(source) --------> stdin -> target.part
    ...
    encoder.finish() ----------------------> feeds the rest, closes stdin; waits,
                                             checks the exit code, renames target.part -> target

``advance`` only records how far the WAV has grown and wakes the worker, so
the emitter never waits for ffmpeg. The worker reads the new PCM back from
the file in blocks of at most ``_BLOCK_BYTES`` and writes it to ffmpeg's
stdin; when ffmpeg is slower than the task, the pipe fills, the worker
waits and the PCM simply stays on disk. Memory is therefore bounded by one
block, whatever the length of the audio, and the encoded file grows while
the task runs. ffmpeg reads raw ``s16le``, so the WAV header (whose sizes
are only right at the end) never matters.

ffmpeg's stderr goes to an anonymous temporary file: it can never fill up
and block ffmpeg and needs no second thread. When encoding fails, its first
error line (the cause, not the "Task finished with error code" lines that
follow it) is the reason given. The output is written as ``target + ".part"``
and renamed only after ffmpeg exited with 0, so ``target`` is either
absent or complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from .decode import BACKGROUND_NICENESS
from .encode import HEADER_BYTES

_BLOCK_BYTES = 1 << 20
_PIPE_SIZE = 1 << 20
_STDERR_HEAD_BYTES = 8192
_KILL_WAIT_SECONDS = 5.0

_LOG_PREFIX = re.compile(r"^(\[[^\]]*@ 0x[0-9a-f]+\]\s*)+")
# Lines ffmpeg logs after the real error, as its threads wind down.
_CONSEQUENCES = (
    "Task finished with error code",
    "Terminating thread with return code",
    "Error sending frames to consumers",
    "Could not open encoder before EOF",
    "Nothing was written into output file",
    "Conversion failed",
)

# Options every encoding gets: no metadata copied from the input, no encoder
# version strings, and each packet written out at once, so the output file
# grows with the audio (ffmpeg otherwise buffers up to 512 KiB of it).
_COMMON_OUTPUT_ARGS = (
    "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
    "-flush_packets", "1",
)  # fmt: skip


@dataclass(frozen=True)
class Format:
    """An output format: its file extension, MIME type, ffmpeg options and limits."""

    name: str
    extension: str
    mime_type: str
    muxer: str | None  # ffmpeg's output format; None when the WAV itself is the result
    codec_args: tuple[str, ...] = ()
    max_sample_rate: int | None = None  # higher rates are resampled to this
    fixed_sample_rate: int | None = None  # every rate is resampled to this
    max_channels: int | None = None  # more channels are mixed down to this
    bitrate_per_channel: int | None = None  # for codecs that take a bit rate, not a quality
    min_bitrate: int = 0

    @property
    def needs_encoder(self) -> bool:
        """Whether this format is made by ffmpeg from the WAV (everything but WAV itself)."""
        return self.muxer is not None

    def output_sample_rate(self, sample_rate: int) -> int:
        """Return the sample rate of the encoded file for an input at sample_rate."""
        if self.fixed_sample_rate is not None:
            return self.fixed_sample_rate
        if self.max_sample_rate is not None:
            return min(sample_rate, self.max_sample_rate)
        return sample_rate

    def output_channels(self, channels: int) -> int:
        """Return the channel count of the encoded file for an input with channels."""
        return channels if self.max_channels is None else min(channels, self.max_channels)

    def ffmpeg_output_args(self, *, sample_rate: int, channels: int) -> list[str]:
        """Return the ffmpeg options between the raw PCM input and the output file."""
        if self.muxer is None:
            raise ValueError(f"{self.name} is written directly and has no ffmpeg options")
        args = list(self.codec_args)
        if self.bitrate_per_channel is not None:
            bitrate = max(
                self.min_bitrate, self.bitrate_per_channel * self.output_channels(channels)
            )
            args += ["-b:a", f"{bitrate // 1000}k"]
        rate = self.output_sample_rate(sample_rate)
        if rate != sample_rate or self.fixed_sample_rate is not None:
            args += ["-ar", str(rate)]
        if self.output_channels(channels) != channels:
            args += ["-ac", str(self.output_channels(channels))]
        return [*args, *_COMMON_OUTPUT_ARGS, "-f", self.muxer]


FORMATS: dict[str, Format] = {
    "wav": Format(name="wav", extension="wav", mime_type="audio/wav", muxer=None),
    "flac": Format(
        name="flac",
        extension="flac",
        mime_type="audio/flac",
        muxer="flac",
        codec_args=("-c:a", "flac"),
        max_channels=8,
    ),
    "mp3": Format(
        name="mp3",
        extension="mp3",
        mime_type="audio/mpeg",
        muxer="mp3",
        # V2 VBR (about 190 kbit/s); the Xing/LAME frame is kept so decoders
        # know the exact length, but no ID3 tag is written.
        codec_args=("-c:a", "libmp3lame", "-q:a", "2", "-id3v2_version", "0"),
        max_sample_rate=48000,
        max_channels=2,
    ),
    "ogg": Format(
        name="ogg",
        extension="ogg",
        mime_type="audio/ogg",
        muxer="ogg",
        codec_args=("-c:a", "libvorbis", "-q:a", "5"),
        max_channels=8,
    ),
    "opus": Format(
        name="opus",
        extension="opus",
        mime_type="audio/ogg",
        muxer="opus",
        codec_args=("-c:a", "libopus"),
        # libopus takes only 8/12/16/24/48 kHz; 48 kHz keeps the full band.
        fixed_sample_rate=48000,
        max_channels=8,
        bitrate_per_channel=48000,  # 96 kbit/s per stereo pair
        min_bitrate=64000,  # mono at 48 kbit/s would sound worse than it needs to
    ),
}


class EncodeError(Exception):
    """ffmpeg could not encode the result (its own error line is in the message)."""


def ffmpeg_command(
    ffmpeg: str, output: Path, *, format: Format, sample_rate: int, channels: int
) -> list[str]:
    """Return the ffmpeg command that encodes raw s16le PCM from stdin into output."""
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
        "-f", "s16le", "-ar", str(sample_rate), "-ac", str(channels), "-i", "pipe:0",
        *format.ffmpeg_output_args(sample_rate=sample_rate, channels=channels),
        f"file:{output}",
    ]  # fmt: skip


class StreamEncoder:
    """Encodes a growing PCM WAV file to another format with ffmpeg, as the WAV grows."""

    def __init__(
        self,
        source: Path,
        target: Path,
        *,
        format: str,
        sample_rate: int,
        channels: int,
        ffmpeg: str,
    ) -> None:
        spec = FORMATS.get(format)
        if spec is None:
            raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
        if not spec.needs_encoder:
            raise ValueError(f"{format} is the WAV itself and needs no encoder")
        if sample_rate <= 0 or channels <= 0:
            raise ValueError(f"invalid audio: {sample_rate} Hz, {channels} channels")
        self.source = Path(source)
        self.target = Path(target)
        self.part = self.target.with_name(self.target.name + ".part")
        self.format = spec
        self.sample_rate = sample_rate
        self.channels = channels
        self.bytes_fed = 0  # PCM bytes written to ffmpeg's stdin so far
        self._frame_bytes = 2 * channels
        self._available = 0  # PCM bytes the source holds, as far as we were told
        self._finishing = False
        self._aborted = False
        self._done = False  # finish or abort has cleaned up; nothing is left to release
        self._pipe_closed = False  # ffmpeg stopped reading before it had all the audio
        self._source_error: str | None = None  # reading the WAV failed
        self._condition = threading.Condition()
        self._end_lock = threading.Lock()  # finish and abort must not clean up at once

        self._source_fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _release
        command = ffmpeg_command(
            ffmpeg, self.part, format=spec, sample_rate=sample_rate, channels=channels
        )
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                bufsize=0,  # unbuffered: close() never has to flush into a dead pipe
                start_new_session=True,
            )
        except OSError as error:
            os.close(self._source_fd)
            self._stderr.close()
            raise EncodeError(f"ffmpeg could not be started: {error}") from error
        with contextlib.suppress(OSError):
            # A larger pipe lets ffmpeg's reads and ours overlap more.
            stdin = cast(IO[bytes], self._proc.stdin)  # a pipe: never None
            fcntl.fcntl(stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            # Encoding is background work, like decoding (see decode.py).
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, BACKGROUND_NICENESS)
        self._worker = threading.Thread(target=self._feed, name=f"encode-{spec.name}", daemon=True)
        self._worker.start()

    # -- the caller's side -------------------------------------------------------

    def advance(self, data_bytes: int) -> None:
        """Note that the source now holds data_bytes of PCM after its header (never blocks)."""
        with self._condition:
            if data_bytes > self._available:
                self._available = data_bytes
                self._condition.notify_all()

    def wait_fed(self, data_bytes: int, *, timeout: float) -> bool:
        """Wait until data_bytes of PCM reached ffmpeg (or feeding ended); return whether it did."""
        with self._condition:
            self._condition.wait_for(
                lambda: self.bytes_fed >= data_bytes or self._feeding_over(), timeout
            )
            return self.bytes_fed >= data_bytes

    @property
    def pid(self) -> int:
        """Return the process id of ffmpeg."""
        return self._proc.pid

    def output_bytes(self) -> int:
        """Return the size of the encoded output written so far."""
        for path in (self.part, self.target):
            with contextlib.suppress(FileNotFoundError):
                return path.stat().st_size
        return 0

    def finish(self, *, timeout: float = 60.0) -> Path:
        """Feed the rest of the source, let ffmpeg end, and move the output to target."""
        deadline = time.monotonic() + timeout
        with self._end_lock:
            if self._done:
                raise EncodeError("the encoder was already finished or aborted")
            with self._condition:
                # No more audio will come, so the source's size is final: feed all
                # of it, even what advance() was not told about.
                size = os.fstat(self._source_fd).st_size - HEADER_BYTES
                self._available = max(self._available, size - size % self._frame_bytes)
                self._finishing = True
                self._condition.notify_all()
            try:
                failed = f"Encoding to {self.format.name} failed"
                self._worker.join(max(0.0, deadline - time.monotonic()))
                if self._worker.is_alive():
                    raise EncodeError(
                        f"{failed}: ffmpeg did not take the audio within {timeout:g} s"
                    )
                try:
                    returncode = self._proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise EncodeError(
                        f"{failed}: ffmpeg did not finish within {timeout:g} s"
                    ) from None
                if self._aborted:
                    raise EncodeError(f"Encoding to {self.format.name} was aborted")
                if returncode != 0:
                    reason = (
                        self._source_error
                        or self._error_line()
                        or (
                            f"ffmpeg was killed by signal {-returncode}"
                            if returncode < 0
                            else f"ffmpeg exited with code {returncode}"
                        )
                    )
                    raise EncodeError(f"{failed}: {reason}")
                if self._pipe_closed or self._source_error:
                    # ffmpeg ended well but did not get all the audio: the output is cut short.
                    reason = self._source_error or "ffmpeg stopped reading the audio"
                    raise EncodeError(f"{failed}: {reason}")
                os.replace(self.part, self.target)
            except BaseException:
                self._release(remove_output=True)
                raise
            self._release(remove_output=False)
            return self.target

    def abort(self) -> None:
        """Stop now: kill ffmpeg and remove the partial output (safe to call again)."""
        with self._condition:
            if self._done:
                return
            self._aborted = True
            self._condition.notify_all()
        # Before taking the lock: a finish() waiting for ffmpeg in another thread
        # then fails at once instead of after its timeout.
        self._kill()
        with self._end_lock:
            if not self._done:
                self._release(remove_output=True)

    def __enter__(self) -> StreamEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    # -- the worker thread -------------------------------------------------------

    def _feeding_over(self) -> bool:
        return self._aborted or not self._worker.is_alive()

    def _feed(self) -> None:
        """Copy PCM from the source to ffmpeg's stdin as it arrives; close stdin at the end."""
        stdin = cast(IO[bytes], self._proc.stdin)  # a pipe: never None
        try:
            while True:
                with self._condition:
                    self._condition.wait_for(
                        lambda: self._aborted or self._finishing or self._available > self.bytes_fed
                    )
                    if self._aborted:
                        return
                    start, end = self.bytes_fed, self._available
                    if start >= end:  # finishing, and everything was fed
                        break
                length = min(end - start, _BLOCK_BYTES)
                block = os.pread(self._source_fd, length, HEADER_BYTES + start)
                if len(block) < length:
                    raise OSError(f"the source ended at {start + len(block)} of {end} bytes")
                view = memoryview(block)
                while view:
                    view = view[stdin.write(view) :]
                with self._condition:
                    self.bytes_fed = start + length
                    self._condition.notify_all()
        except BrokenPipeError:
            # ffmpeg exited early (failed or killed): its exit code and stderr tell why.
            self._pipe_closed = True
        except OSError as error:
            self._source_error = f"reading the audio failed: {error}"
            # Without the rest of the audio the output would be cut short: stop ffmpeg.
            self._kill()
        finally:
            with contextlib.suppress(OSError):
                stdin.close()
            with self._condition:
                self._condition.notify_all()  # wake wait_fed(): feeding is over

    # -- ending ------------------------------------------------------------------

    def _kill(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    def _release(self, *, remove_output: bool) -> None:
        """Stop the worker and ffmpeg if they still run, close everything, remove leftovers."""
        with self._condition:
            if remove_output:
                self._aborted = True
            self._condition.notify_all()
        if remove_output:
            # Killing ffmpeg also unblocks a worker stuck writing to a full pipe.
            self._kill()
        self._worker.join(_KILL_WAIT_SECONDS)
        if self._worker.is_alive():  # still blocked on a pipe ffmpeg does not read
            self._kill()
            self._worker.join()
        try:
            self._proc.wait(_KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self._kill()
            self._proc.wait()
        os.close(self._source_fd)
        self._stderr.close()
        if remove_output:
            with contextlib.suppress(FileNotFoundError):
                self.part.unlink()
        self._done = True

    def _error_line(self) -> str | None:
        """Return the line of ffmpeg's stderr that names the cause, without its log prefix."""
        self._stderr.seek(0)
        text = self._stderr.read(_STDERR_HEAD_BYTES).decode("utf-8", "replace")
        lines = [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines()]
        lines = [line for line in lines if line]
        # ffmpeg logs the cause first, then how each of its threads gave up.
        causes = [line for line in lines if not line.startswith(_CONSEQUENCES)]
        found = causes or lines
        return found[0] if found else None
