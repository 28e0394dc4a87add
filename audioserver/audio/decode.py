"""Streaming decode: ffmpeg writes the upload's first audio stream to a pipe as 32-bit PCM.

The ``Decoder`` starts ffmpeg, reads the WAV header (sample rate and
channels) and the first samples, so a file that is not audio fails at once,
then hands out pydub ``AudioSegment``-s of the frames as they are decoded.
ffmpeg runs in its own process, so decoding overlaps with the processing of
earlier chunks, and a crafted file can at worst make that process fail,
stall (it is killed after ``stall_seconds`` without output) or run long (it
stops at ``max_seconds``).

The samples keep what a float decode keeps. ffmpeg decodes to float as
before, scales by 2**-4 (exact: a power of two) and writes signed 32-bit
integers, so full scale is 2**27 and samples up to +24 dBFS (a float WAV's
or an MP3's overs) survive; below that the resolution is 2**-27 of full
scale (-162 dBFS). ``HEADROOM_BITS`` says so to whoever reads the segments
(``pcm.to_float``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import logging
import os
import re
import select
import signal
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn, cast

import numpy as np

from ..exceptions import DecodeError
from .pcm import AudioSegment

logger = logging.getLogger(__name__)

# Containers ffmpeg may open: audio formats, and the video containers audio
# often arrives in. Playlists (hls, concat, ...) and raw devices are left out so
# an upload can never make ffmpeg open another file or a URL.
AUDIO_DEMUXERS = (
    "aac,ac3,aiff,amr,amrnb,amrwb,ape,asf,au,avi,caf,dsf,dts,dtshd,eac3,flac,flv,"
    "gsm,iff,loas,matroska,mlp,mov,mp3,mpc,mpc8,mpeg,mpegts,nut,ogg,oma,rm,shn,tak,"
    "truehd,tta,voc,w64,wav,wv,xwma"
)

# ffmpeg's own lines about the input start with exactly two spaces. A file's tags are
# printed too, but always indented further, even a tag value's second line (ffmpeg
# prefixes it with the indent and a 16-character key column): so a tag that says
# "Duration: 05:00:00.00" or "Audio: evilcodec" can never match these.
_DURATION = re.compile(r"^  Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?),")
_AUDIO_STREAM = re.compile(r"^  Stream #0:\d+(?:\[\w+\])?(?:\(\w+\))?: Audio: (\w+)")
# What ffmpeg writes for a sample it cannot represent: NaN and infinities in a float
# file (and samples beyond +24 dBFS) land on the 32-bit rails.
_RAILS = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
_LOG_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")
_ERROR_WORDS = ("error", "invalid", "failed", "not on whitelist", "unsupported", "could not")
_PIPE_SIZE = 1 << 20
HEADROOM_BITS = 4  # the decoded segments' full scale is 2**27: +24 dBFS of overs fit
SAMPLE_WIDTH = 4
BACKGROUND_NICENESS = 10


@dataclass(frozen=True)
class AudioInfo:
    """What the decoder found in the upload."""

    sample_rate: int
    channels: int
    duration: float | None  # from the container; None when it does not say
    codec: str | None


class _StderrLog:
    """Drains ffmpeg's stderr on a thread: keeps the last lines and the input's description."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=60)
        self.input_described = threading.Event()
        self.duration: float | None = None
        self.codec: str | None = None
        self._thread = threading.Thread(
            target=self._drain, args=(stream,), name="ffmpeg-stderr", daemon=True
        )
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                self._take(raw.decode("utf-8", "replace").rstrip())
        finally:
            self.input_described.set()

    def _take(self, line: str) -> None:
        self.lines.append(line)
        if self.duration is None and (match := _DURATION.match(line)):
            hours, minutes, seconds = match.groups()
            self.duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        if self.codec is None and (match := _AUDIO_STREAM.match(line)):
            self.codec = match.group(1)
        if line.startswith(("Stream mapping:", "Output #0")):
            self.input_described.set()

    def error_line(self) -> str:
        """Return ffmpeg's most telling error line, without its log prefix."""
        lines = [_LOG_PREFIX.sub("", line).strip() for line in self.lines]
        if any("matches no streams" in line for line in lines):
            return "the file has no audio stream"
        errors = [
            line
            for line in lines
            if any(word in line.lower() for word in _ERROR_WORDS)
            and not line.startswith(("Error opening input file", "Conversion failed"))
        ]
        if errors:
            return errors[0] if "whitelist" in errors[0] else errors[-1]
        return lines[-1] if lines else "ffmpeg gave no reason"

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def decoder_command(ffmpeg: str, name: str, max_seconds: float) -> list[str]:
    """The decoder's command line for a file named name (ffmpeg runs in the file's folder)."""
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info",
        "-protocol_whitelist", "file", "-format_whitelist", AUDIO_DEMUXERS,
        "-i", f"file:{name}",
        "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1", "-fflags", "+bitexact",
        # In float, then to 32-bit integers with HEADROOM_BITS to spare (no clipping, no dither).
        "-af", f"volume=volume={2.0**-HEADROOM_BITS}:precision=float",
        "-t", f"{max_seconds:.3f}", "-f", "wav", "-c:a", "pcm_s32le", "pipe:1",
    ]  # fmt: skip


class Decoder:
    """A running ffmpeg decoding one file; ``read`` returns segments of 32-bit PCM with headroom."""

    headroom_bits = HEADROOM_BITS

    def __init__(
        self,
        path: Path,
        *,
        ffmpeg: str,
        max_seconds: float = 4 * 3600.0,
        stall_seconds: float = 30.0,
        max_channels: int = 8,
    ) -> None:
        path = Path(path)
        self.path = path
        self.stall_seconds = stall_seconds
        self.frames_read = 0
        self.silenced = 0  # samples that were not finite numbers (or beyond +24 dBFS)
        self._killed = False
        self._pending = b""
        self._proc = subprocess.Popen(
            decoder_command(ffmpeg, path.name, max_seconds),
            cwd=path.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        # Both are pipes (never None); stdout is buffered, its raw file reads what has come.
        stdout = cast("io.BufferedReader[io.FileIO]", self._proc.stdout)
        stderr = cast(IO[bytes], self._proc.stderr)
        with contextlib.suppress(OSError):
            fcntl.fcntl(stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            # Decoding is background work: the server's own threads (answering requests,
            # emitting chunks) come first when the cores are busy.
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, BACKGROUND_NICENESS)
        self._stdout = stdout.raw
        self._stderr = _StderrLog(stderr)
        try:
            self.info = self._start(max_channels)
        except BaseException:
            self.close()
            raise

    # -- opening --------------------------------------------------------------

    def _start(self, max_channels: int) -> AudioInfo:
        sample_rate, channels = self._read_header()
        if channels > max_channels:
            raise DecodeError(
                f"The audio has {channels} channels; the server takes at most {max_channels}. "
                "Mix it down to stereo first."
            )
        self.frame_bytes = channels * SAMPLE_WIDTH
        first = self._read_into_pending(self.frame_bytes)
        if not first:
            self._fail("the file holds no audio samples")
        self._stderr.input_described.wait(timeout=self.stall_seconds)
        return AudioInfo(sample_rate, channels, self._stderr.duration, self._stderr.codec)

    def _read_header(self) -> tuple[int, int]:
        riff = self._read_exact(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            self._fail()
        sample_rate: int | None = None
        channels: int | None = None
        while True:
            head = self._read_exact(8)
            if len(head) < 8:
                self._fail()
            chunk_id, size = head[:4], struct.unpack("<I", head[4:])[0]
            if chunk_id == b"data":
                break
            if size > 1 << 20:
                self._fail("unexpected WAV header from ffmpeg")
            body = self._read_exact(size + (size & 1))
            if chunk_id == b"fmt ":
                channels, sample_rate = struct.unpack("<HI", body[2:8])
        if not sample_rate or not channels:
            self._fail("ffmpeg did not describe the audio")
        return sample_rate, channels

    def _fail(self, reason: str | None = None) -> NoReturn:
        """Raise a DecodeError with the reason, or with ffmpeg's own error line."""
        self._wait_for_exit()
        reason = reason or self._stderr.error_line()
        raise DecodeError(
            f"The file could not be decoded as audio: {reason}. "
            "Upload an audio file (for example WAV, MP3, FLAC, OGG, Opus or M4A)."
        )

    # -- reading --------------------------------------------------------------

    def _read_some(self, buffer: memoryview) -> int:
        """Read what the pipe has into buffer, waiting at most stall_seconds; 0 at the end."""
        # poll, not select: select() cannot watch a descriptor numbered 1024 or more, which a
        # server holding a thousand connections hands out.
        poller = select.poll()
        poller.register(self._stdout, select.POLLIN)
        if not poller.poll(self.stall_seconds * 1000):
            self.kill()
            raise DecodeError(
                f"Decoding stalled: ffmpeg produced nothing for {self.stall_seconds:g} s. "
                "The file is probably damaged."
            )
        return self._stdout.readinto(buffer) or 0

    def _read_exact(self, size: int) -> bytes:
        """Read size bytes, fewer only at the end of the stream."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = len(self._pending)
        view[:got] = self._pending
        self._pending = b""
        while got < size:
            count = self._read_some(view[got:])
            if count == 0:
                break
            got += count
        return bytes(buffer[:got]) if got < size else bytes(buffer)

    def _read_into_pending(self, size: int) -> bytes:
        self._pending = self._read_exact(size)
        return self._pending

    def read(self, frames: int) -> AudioSegment:
        """Return the next ``frames`` frames (fewer only at the end) as 32-bit PCM with headroom."""
        data = self._read_exact(frames * self.frame_bytes)
        if len(data) < frames * self.frame_bytes:
            self._finish()
            data = data[: len(data) - len(data) % self.frame_bytes]
        self.frames_read += len(data) // self.frame_bytes
        return AudioSegment(
            data=self._silence_rails(data),
            sample_width=SAMPLE_WIDTH,
            frame_rate=self.info.sample_rate,
            channels=self.info.channels,
        )

    def _silence_rails(self, data: bytes) -> bytes:
        """Replace samples on the 32-bit rails (NaN, infinities, beyond +24 dBFS) with 0."""
        samples = np.frombuffer(data, dtype="<i4")
        if not samples.size or (samples.min() > _RAILS[0] and samples.max() < _RAILS[1]):
            return data  # the usual case: two quick reductions, no copy
        samples = samples.copy()
        railed = (samples == _RAILS[0]) | (samples == _RAILS[1])
        self.silenced += int(np.count_nonzero(railed))
        samples[railed] = 0
        return samples.tobytes()

    def _finish(self) -> None:
        """At the end of the stream: make sure ffmpeg ended well."""
        returncode = self._wait_for_exit()
        if returncode < 0 and not self._killed:
            raise DecodeError(
                f"Decoding failed part way: the decoder (ffmpeg) was killed by signal "
                f"{-returncode} ({signal.Signals(-returncode).name}), by something outside the "
                "server (out of memory, an operator). Upload the file again."
            )
        if returncode != 0 and not self._killed:
            raise DecodeError(f"Decoding failed part way: {self._stderr.error_line()}.")

    # -- ending ---------------------------------------------------------------

    def _wait_for_exit(self) -> int:
        try:
            returncode = self._proc.wait(timeout=self.stall_seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self._proc.wait()
        self._stderr.join(timeout=1.0)
        return returncode

    def kill(self) -> None:
        """Stop ffmpeg now (a stopped task no longer needs its audio)."""
        self._killed = True
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    def close(self) -> None:
        """Stop ffmpeg if it still runs and release its pipes."""
        self.kill()
        self._proc.wait()
        self._stderr.join(timeout=1.0)
        for stream in (self._proc.stdout, self._proc.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:  # never: both are pipes
                    stream.close()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
