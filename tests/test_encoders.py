"""The streaming encoder: a growing WAV encoded to FLAC, MP3, Ogg Vorbis and Opus as it grows.

Every result is decoded by ffmpeg's own CLI (``ffmpeg_decode``) and compared
with the PCM that went in: FLAC bit for bit, the lossy formats by length,
level and signal-to-noise ratio after alignment.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import ffmpeg_decode, music, to_int16
from scipy import signal

from audioserver.audio.encode import WavWriter
from audioserver.audio.encoders import FORMATS, EncodeError, StreamEncoder, ffmpeg_command

LOSSY = ("mp3", "ogg", "opus")
ENCODED = ("flac", *LOSSY)
MP3_FRAME = 1152
# Waveform SNR of music() after each codec (measured: mp3 24, ogg 23, opus 19 dB).
# Opus keeps the spectrum more than the waveform (it fills bands with noise), so
# it gets the lower bar; a broken encoding (wrong rate, channels, offset) is far below.
MIN_SNR_DB = {"mp3": 20.0, "ogg": 20.0, "opus": 15.0}


# -- helpers ---------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Poll condition until it holds; fail after timeout (for things no event announces)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)


def as_int16(decoded: np.ndarray) -> np.ndarray:
    """ffmpeg_decode's float64 back to the int16 it was made of."""
    return np.rint(decoded * 32768).astype("<i2")


def gone(pid: int) -> bool:
    """Whether no process has this id any more (it exited and was reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".part"))


def align(reference: np.ndarray, decoded: np.ndarray, *, max_lag: int = 4096) -> tuple[int, int]:
    """Return (lag, frames): decoded[lag + i] matches reference[i] for i < frames."""
    a, b = reference.sum(axis=1), decoded.sum(axis=1)
    correlation = signal.correlate(b, a, mode="full", method="fft")
    lags = signal.correlation_lags(len(b), len(a), mode="full")
    near = np.abs(lags) <= max_lag
    lag = int(lags[near][np.argmax(correlation[near])])
    frames = min(len(reference) - max(0, -lag), len(decoded) - max(0, lag))
    return lag, frames


def snr_db(reference: np.ndarray, decoded: np.ndarray, *, rate: int) -> tuple[float, float, int]:
    """Return (SNR in dB, level difference in dB, lag) of decoded against reference, aligned.

    Both are high-passed at 60 Hz first: Opus removes DC and shifts the phase of
    the lowest bass on purpose, which says nothing about the encoding's quality.
    """
    highpass = signal.butter(4, 60, btype="highpass", fs=rate, output="sos")
    reference = signal.sosfiltfilt(highpass, reference, axis=0)
    decoded = signal.sosfiltfilt(highpass, decoded, axis=0)
    lag, frames = align(reference, decoded)
    ref = reference[max(0, -lag) :][:frames]
    dec = decoded[max(0, lag) :][:frames]
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - dec) ** 2))
    level = 10 * np.log10(np.mean(dec**2) / np.mean(ref**2))
    return float(snr), float(level), lag


def fd_count() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


class Source:
    """A WavWriter with a StreamEncoder on it; closes the writer at the end."""

    def __init__(
        self, tmp_path: Path, ffmpeg: str, *, format: str, rate: int = 44100, channels: int = 2
    ) -> None:
        self.closed = False
        self.writer = WavWriter(tmp_path / "result.wav", sample_rate=rate, channels=channels)
        self.target = tmp_path / f"result.{FORMATS[format].extension}"
        self.encoder = StreamEncoder(
            self.writer.path,
            self.target,
            format=format,
            sample_rate=rate,
            channels=channels,
            ffmpeg=ffmpeg,
        )

    def append(self, pcm: np.ndarray) -> None:
        self.writer.append(pcm.tobytes())
        self.encoder.advance(self.writer.data_bytes)

    def close(self) -> None:
        self.encoder.abort()
        if not self.closed:
            self.writer.close()
            self.closed = True


@pytest.fixture
def make_source(tmp_path: Path, ffmpeg: str) -> Iterator[Callable[..., Source]]:
    sources: list[Source] = []

    def make(format: str, **kwargs) -> Source:
        source = Source(tmp_path, ffmpeg, format=format, **kwargs)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


def encode_in_pieces(source: Source, pcm: np.ndarray, *, pieces: int = 20) -> Path:
    """Append pcm in pieces, letting the encoder catch up half way; return the finished file."""
    for index, piece in enumerate(np.array_split(pcm, pieces)):
        source.append(piece)
        if index == pieces // 2:
            # The encoder consumes while the WAV still grows.
            assert source.encoder.wait_fed(source.writer.data_bytes, timeout=30)
            assert not source.target.exists()
    return source.encoder.finish()


# -- the formats -----------------------------------------------------------------


def test_formats_table() -> None:
    assert set(FORMATS) == {"wav", "flac", "mp3", "ogg", "opus"}
    assert {name: spec.mime_type for name, spec in FORMATS.items()} == {
        "wav": "audio/wav",
        "flac": "audio/flac",
        "mp3": "audio/mpeg",
        "ogg": "audio/ogg",
        "opus": "audio/ogg",
    }
    assert all(spec.extension == name for name, spec in FORMATS.items())
    assert not FORMATS["wav"].needs_encoder
    assert all(FORMATS[name].needs_encoder for name in ENCODED)
    with pytest.raises(AttributeError):
        FORMATS["mp3"].max_channels = 6  # frozen


def test_limits_in_the_command() -> None:
    def output_options(format: str, rate: int, channels: int) -> dict[str, str]:
        command = ffmpeg_command(
            "ffmpeg", Path("out"), format=FORMATS[format], sample_rate=rate, channels=channels
        )
        after_input = command[command.index("pipe:0") + 1 : -1]
        return dict(zip(after_input[::2], after_input[1::2], strict=True))

    mp3 = output_options("mp3", 96000, 6)
    assert (mp3["-c:a"], mp3["-q:a"], mp3["-ar"], mp3["-ac"]) == ("libmp3lame", "2", "48000", "2")
    assert "-ar" not in output_options("mp3", 48000, 2)
    assert "-ac" not in output_options("mp3", 44100, 2)
    opus = output_options("opus", 44100, 2)
    assert (opus["-c:a"], opus["-b:a"], opus["-ar"], opus["-f"]) == (
        "libopus",
        "96k",
        "48000",
        "opus",
    )
    assert output_options("opus", 48000, 1)["-ar"] == "48000"
    assert output_options("opus", 44100, 1)["-b:a"] == "64k"
    assert output_options("opus", 96000, 6)["-b:a"] == "288k"
    assert "-ac" not in output_options("opus", 96000, 6)
    assert output_options("ogg", 44100, 10)["-ac"] == "8"
    assert output_options("ogg", 44100, 2)["-q:a"] == "5"
    assert output_options("flac", 96000, 6)["-c:a"] == "flac"
    for format in ENCODED:
        command = ffmpeg_command(
            "ffmpeg", Path("out"), format=FORMATS[format], sample_rate=44100, channels=2
        )
        assert command[1:7] == ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]
        assert command[7:15] == ["-f", "s16le", "-ar", "44100", "-ac", "2", "-i", "pipe:0"]
        assert output_options(format, 44100, 2)["-map_metadata"] == "-1"
        assert command[-1] == "file:out"


# -- round trips -----------------------------------------------------------------


def test_flac_is_exact(make_source: Callable[..., Source]) -> None:
    pcm = to_int16(music(6.0))
    source = make_source("flac")
    result = encode_in_pieces(source, pcm)
    assert result == source.target
    assert result.read_bytes()[:4] == b"fLaC"
    np.testing.assert_array_equal(as_int16(ffmpeg_decode(result)), pcm)
    assert leftovers(result.parent) == []


@pytest.mark.parametrize("format", LOSSY)
def test_lossy_round_trip(make_source: Callable[..., Source], format: str) -> None:
    original = to_int16(music(6.0))
    source = make_source(format)
    result = encode_in_pieces(source, original)
    assert leftovers(result.parent) == []
    magic = {"mp3": (b"\xff",), "ogg": (b"OggS",), "opus": (b"OggS",)}[format]
    assert result.read_bytes().startswith(magic)
    decoded = ffmpeg_decode(result)
    reference = original / 32768.0
    assert decoded.shape[1] == 2
    if format == "opus":
        # Opus always comes out at 48 kHz: compare with the original resampled.
        reference = signal.resample_poly(reference, 160, 147, axis=0)
        assert abs(len(decoded) - 6 * 48000) <= 48 * 3  # within 3 ms
    elif format == "mp3":
        assert abs(len(decoded) - len(original)) <= MP3_FRAME
    else:
        assert len(decoded) == len(original)
    snr, level, lag = snr_db(reference, decoded, rate=48000 if format == "opus" else 44100)
    assert abs(lag) <= 64, lag
    assert abs(level) < 0.5, level
    assert snr > MIN_SNR_DB[format], snr


# -- streaming -------------------------------------------------------------------


@pytest.mark.parametrize("format", ENCODED)
def test_encodes_while_the_wav_grows(make_source: Callable[..., Source], format: str) -> None:
    pcm = to_int16(music(6.0))
    pieces = np.array_split(pcm, 20)
    source = make_source(format)
    for piece in pieces[:14]:  # about 4 s
        source.append(piece)
    # All of it reached ffmpeg, and encoded output appeared, before finish().
    assert source.encoder.wait_fed(source.writer.data_bytes, timeout=30)
    assert source.encoder.bytes_fed == source.writer.data_bytes
    wait_until(lambda: source.encoder.output_bytes() > 0)
    assert source.encoder.part.exists() and not source.target.exists()
    early = source.encoder.output_bytes()
    for piece in pieces[14:]:
        source.append(piece)
    result = source.encoder.finish()
    assert result.stat().st_size > early
    assert not source.encoder.part.exists()


def test_advance_never_blocks_on_a_slow_ffmpeg(
    fake_ffmpeg: Callable[[str], str], tmp_path: Path
) -> None:
    # This "ffmpeg" never reads its stdin: the pipe fills and the worker waits, not the caller.
    source = Source(tmp_path, fake_ffmpeg("exec sleep 60"), format="mp3")
    try:
        block = to_int16(music(1.0))
        started = time.monotonic()
        for _ in range(30):  # 30 s of audio, far more than a pipe holds
            source.append(block)
        assert time.monotonic() - started < 5.0
        assert source.encoder.bytes_fed < source.writer.data_bytes
        pid = source.encoder.pid
        source.encoder.abort()
        assert gone(pid)
    finally:
        source.close()
    assert leftovers(tmp_path) == []


def test_finish_feeds_what_advance_was_not_told(make_source: Callable[..., Source]) -> None:
    pcm = to_int16(music(2.0))
    source = make_source("flac")
    source.writer.append(pcm.tobytes())  # no advance(): finish() takes the whole file
    result = source.encoder.finish()
    assert np.array_equal(as_int16(ffmpeg_decode(result)), pcm)


# -- limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("format", "channels", "frames"),
    [("mp3", 2, 6 * 48000), ("opus", 6, 6 * 48000), ("ogg", 6, 6 * 96000), ("flac", 6, 6 * 96000)],
)
def test_96khz_six_channels(
    make_source: Callable[..., Source], format: str, channels: int, frames: int
) -> None:
    original = to_int16(music(6.0, rate=96000, channels=6))
    source = make_source(format, rate=96000, channels=6)
    result = encode_in_pieces(source, original)
    decoded = ffmpeg_decode(result)
    assert decoded.shape[1] == channels
    assert abs(len(decoded) - frames) <= (MP3_FRAME if format == "mp3" else 48 * 3)
    if format == "flac":
        assert np.array_equal(as_int16(decoded), original)
        return
    # All six channels of music() are the same, so each output channel is close to
    # the first input channel (mp3's downmix adds them up and may scale them).
    reference = original[:, :1] / 32768.0
    if len(decoded) != len(original):
        reference = signal.resample_poly(reference, 1, 2, axis=0)
    for channel in range(channels):
        _, frames_aligned = align(reference, decoded[:, channel : channel + 1])
        pair = np.stack([reference[:frames_aligned, 0], decoded[:frames_aligned, channel]])
        correlation = np.corrcoef(pair)[0, 1]
        assert correlation > 0.95, (channel, correlation)


@pytest.mark.parametrize("format", ENCODED)
def test_mono(make_source: Callable[..., Source], format: str) -> None:
    original = to_int16(music(3.0, channels=1))
    source = make_source(format, channels=1)
    result = encode_in_pieces(source, original, pieces=7)
    decoded = ffmpeg_decode(result)
    assert decoded.shape[1] == 1
    reference = original / 32768.0
    if format == "flac":
        assert np.array_equal(as_int16(decoded), original)
        return
    if format == "opus":
        reference = signal.resample_poly(reference, 160, 147, axis=0)
    snr, level, _ = snr_db(reference, decoded, rate=48000 if format == "opus" else 44100)
    assert abs(level) < 0.5, level
    assert snr > MIN_SNR_DB[format], snr


# -- stopping and failing --------------------------------------------------------


@pytest.fixture
def fake_ffmpeg(tmp_path: Path) -> Callable[[str], str]:
    """Make an executable shell script that stands in for ffmpeg."""

    def make(body: str) -> str:
        path = tmp_path / "bin" / "fake-ffmpeg"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    return make


_EARLIER: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _earlier_threads() -> None:
    """Remember the threads other tests left running: encoder_threads() judges this test's own."""
    _EARLIER.clear()
    _EARLIER.update(threading.enumerate())


def encoder_threads() -> list[threading.Thread]:
    """The encoder threads this test started that still run."""
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("encode-") and thread not in _EARLIER
    ]


@pytest.mark.parametrize("format", ENCODED)
def test_abort_mid_stream(make_source: Callable[..., Source], format: str) -> None:
    before = fd_count()
    source = make_source(format)
    for piece in np.array_split(to_int16(music(3.0)), 10):
        source.append(piece)
    assert source.encoder.wait_fed(source.writer.data_bytes, timeout=30)
    pid = source.encoder.pid
    source.encoder.abort()
    source.encoder.abort()  # twice is fine
    assert gone(pid)
    assert not source.encoder.part.exists() and not source.target.exists()
    assert encoder_threads() == []
    source.close()
    assert fd_count() == before
    with pytest.raises(EncodeError, match="already"):
        source.encoder.finish()


def test_abort_after_finish_keeps_the_result(make_source: Callable[..., Source]) -> None:
    source = make_source("ogg")
    source.append(to_int16(music(1.0)))
    result = source.encoder.finish()
    source.encoder.abort()
    assert result.exists() and result.stat().st_size > 0
    assert gone(source.encoder.pid)


def test_no_descriptor_or_thread_leaks(tmp_path: Path, ffmpeg: str) -> None:
    before = fd_count()
    for format in ENCODED:
        source = Source(tmp_path, ffmpeg, format=format)
        source.append(to_int16(music(0.5)))
        source.encoder.finish()
        source.close()
    assert fd_count() == before
    assert encoder_threads() == []


def test_impossible_option_fails_with_ffmpeg_reason(
    make_source: Callable[..., Source], tmp_path: Path
) -> None:
    # libvorbis cannot encode at 1 MHz: ffmpeg refuses, and says why.
    source = make_source("ogg", rate=1_000_000)
    source.append(to_int16(music(0.2, rate=1_000_000)))
    with pytest.raises(EncodeError, match=r"^Encoding to ogg failed: encoder setup failed$"):
        source.encoder.finish()
    assert not source.target.exists()
    assert leftovers(tmp_path) == []
    assert gone(source.encoder.pid)


def test_missing_output_directory_fails(tmp_path: Path, ffmpeg: str) -> None:
    writer = WavWriter(tmp_path / "result.wav", sample_rate=44100, channels=2)
    try:
        encoder = StreamEncoder(
            writer.path, tmp_path / "nowhere" / "result.flac", format="flac",
            sample_rate=44100, channels=2, ffmpeg=ffmpeg,
        )  # fmt: skip
        writer.append(to_int16(music(0.5)).tobytes())
        encoder.advance(writer.data_bytes)
        with pytest.raises(EncodeError, match="No such file or directory"):
            encoder.finish()
    finally:
        writer.close()


def test_killed_ffmpeg_fails(make_source: Callable[..., Source], tmp_path: Path) -> None:
    source = make_source("opus")
    source.append(to_int16(music(1.0)))
    assert source.encoder.wait_fed(source.writer.data_bytes, timeout=30)
    os.kill(source.encoder.pid, 9)
    source.append(to_int16(music(1.0)))
    with pytest.raises(EncodeError, match="killed by signal 9"):
        source.encoder.finish()
    assert not source.target.exists()
    assert leftovers(tmp_path) == []


def test_ffmpeg_error_line_is_the_message(
    tmp_path: Path, fake_ffmpeg: Callable[[str], str]
) -> None:
    # The cause comes first; the lines ffmpeg's threads log as they give up are skipped.
    ffmpeg = fake_ffmpeg(
        "echo '[libvorbis @ 0x5571a0] encoder setup failed' >&2\n"
        "echo '[af#0:0 @ 0x5571b0] Task finished with error code: -22' >&2\n"
        "echo '[out#0/ogg @ 0x5571c0] Nothing was written into output file' >&2\n"
        "exit 1"
    )
    source = Source(tmp_path, ffmpeg, format="ogg")
    try:
        source.append(to_int16(music(0.5)))
        with pytest.raises(EncodeError, match=r"^Encoding to ogg failed: encoder setup failed$"):
            source.encoder.finish()
    finally:
        source.close()
    assert leftovers(tmp_path) == []


def test_finish_times_out_on_a_stuck_ffmpeg(
    tmp_path: Path, fake_ffmpeg: Callable[[str], str]
) -> None:
    source = Source(tmp_path, fake_ffmpeg("exec sleep 60"), format="flac")
    try:
        source.append(to_int16(music(0.5)))
        started = time.monotonic()
        with pytest.raises(EncodeError, match=r"within 0\.5 s"):
            source.encoder.finish(timeout=0.5)
        assert time.monotonic() - started < 5
        assert gone(source.encoder.pid)
    finally:
        source.close()
    assert leftovers(tmp_path) == []
    assert encoder_threads() == []


def test_bad_arguments(tmp_path: Path, ffmpeg: str) -> None:
    source = tmp_path / "result.wav"
    source.write_bytes(b"")
    for format in ("wav", "aac"):
        with pytest.raises(ValueError, match=format):
            StreamEncoder(source, tmp_path / "out", format=format, sample_rate=44100, channels=2,
                          ffmpeg=ffmpeg)  # fmt: skip
    with pytest.raises(EncodeError, match="could not be started"):
        StreamEncoder(source, tmp_path / "out.flac", format="flac", sample_rate=44100,
                      channels=2, ffmpeg=str(tmp_path / "no-ffmpeg"))  # fmt: skip


def test_abort_while_finishing(tmp_path: Path, fake_ffmpeg: Callable[[str], str]) -> None:
    # finish() waits for a stuck ffmpeg; abort() from another thread ends it at once.
    source = Source(tmp_path, fake_ffmpeg("exec sleep 60"), format="opus")
    try:
        source.append(to_int16(music(0.5)))
        failure: list[BaseException] = []

        def finish() -> None:
            try:
                source.encoder.finish(timeout=60)
            except EncodeError as error:
                failure.append(error)

        finisher = threading.Thread(target=finish)
        started = time.monotonic()
        finisher.start()
        source.encoder.abort()
        finisher.join(10)
        assert not finisher.is_alive() and time.monotonic() - started < 10
        assert len(failure) in (0, 1)  # finish() may not have started before abort()
        if failure:
            assert "aborted" in str(failure[0])
        assert gone(source.encoder.pid)
    finally:
        source.close()
    assert leftovers(tmp_path) == []
