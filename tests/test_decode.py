"""Streaming decode with the project's ffmpeg: real encoded files, and files that are not audio."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest
from helpers import (
    ffmpeg_decode,
    ffmpeg_decode_float,
    ffmpeg_make,
    music,
    sine,
    to_int16,
    write_float_wav,
    write_wav,
)

from audioserver.audio.decode import HEADROOM_BITS, Decoder
from audioserver.audio.pcm import AudioSegment, to_float
from audioserver.exceptions import DecodeError


@pytest.fixture
def decode(ffmpeg):
    decoders = []

    def open_(path, **options):
        decoder = Decoder(path, ffmpeg=ffmpeg, **options)
        decoders.append(decoder)
        return decoder

    yield open_
    for decoder in decoders:
        decoder.close()


def read_all(decoder: Decoder, block: int = 10_000) -> np.ndarray:
    """Read to the end; return float64 samples (full scale 1.0) of shape (frames, channels)."""
    parts = []
    while (segment := decoder.read(block)).frame_count():
        parts.append(to_float(segment, headroom_bits=decoder.headroom_bits))
    return np.concatenate(parts)


def test_wav_decodes_to_exactly_its_samples(decode, tmp_path):
    x = music(2.5, rate=22050, channels=2)
    decoder = decode(write_wav(tmp_path / "a.wav", x, 22050))
    assert (decoder.info.sample_rate, decoder.info.channels) == (22050, 2)
    assert decoder.info.duration == pytest.approx(2.5, abs=0.01)
    assert decoder.info.codec == "pcm_s16le"
    decoded = read_all(decoder, block=4096)
    np.testing.assert_array_equal(decoded, to_int16(x) / 32768.0)
    assert decoder.frames_read == len(x)


def test_reads_are_pydub_segments_of_32_bit_pcm_with_24_db_of_headroom(decode, tmp_path):
    x = np.full((1000, 2), 0.5)
    x[10] = [1.0, -1.0]
    decoder = decode(write_wav(tmp_path / "a.wav", x, 8000))
    segment = decoder.read(600)
    assert isinstance(segment, AudioSegment)
    assert (segment.sample_width, segment.frame_rate, segment.channels) == (4, 8000, 2)
    assert segment.frame_count() == 600
    assert HEADROOM_BITS == decoder.headroom_bits == 4
    pcm = np.frombuffer(segment.raw_data, dtype="<i4").reshape(-1, 2)
    # Full scale is 2**27: 16 times (24 dB) below the 32-bit limit.
    assert pcm[10].tolist() == [32767 * 2**12, -32767 * 2**12]
    assert pcm[0].tolist() == [16384 * 2**12] * 2
    assert decoder.read(600).frame_count() == 400


def test_overs_in_a_float_wav_survive_decoding(decode, tmp_path):
    x = sine(0.5, rate=8000, amplitude=2.0)  # +6 dBFS
    x[100] = [15.0, -15.9]  # +24 dBFS, nearly
    decoded = read_all(decode(write_float_wav(tmp_path / "f.wav", x, 8000)))
    source = x.astype(np.float32)
    # The float32 source, to the 32-bit samples' resolution (2**-27 of full scale, rounded).
    np.testing.assert_allclose(decoded, source, rtol=0, atol=2.0**-28)
    assert np.max(np.abs(decoded[:, 0])) == pytest.approx(15.0)
    assert decoded[100, 1] == pytest.approx(-15.9, abs=1e-6)


def test_overs_in_an_mp3_survive_decoding(decode, tmp_path):
    loud = write_float_wav(tmp_path / "loud.wav", sine(2.0, amplitude=2.0), 44100)  # +6 dBFS
    mp3 = ffmpeg_make(f"-i {loud} -c:a libmp3lame -b:a 192k", tmp_path / "loud.mp3")
    decoded = read_all(decode(mp3))
    reference = ffmpeg_decode_float(mp3)  # ffmpeg's own float decode
    assert np.max(np.abs(reference)) > 1.8
    assert decoded.shape == reference.shape
    np.testing.assert_allclose(decoded, reference, rtol=0, atol=2.0**-28)


@pytest.mark.parametrize(
    ("fmt", "codec"),
    [("mp3", "mp3"), ("ogg", "vorbis"), ("flac", "flac"), ("m4a", "aac"), ("opus", "opus")],
)
def test_encoded_files_decode_like_ffmpegs_own_cli(decode, audio_file, fmt, codec):
    rate = 48000 if fmt == "opus" else 44100
    path = audio_file(3.0, fmt, rate=rate)
    decoder = decode(path)
    assert decoder.info.sample_rate == rate and decoder.info.channels == 2
    assert decoder.info.codec == codec
    assert decoder.info.duration == pytest.approx(3.0, abs=0.1)
    decoded = read_all(decoder)
    reference = ffmpeg_decode(path)
    assert decoded.shape == reference.shape
    # The reference went through 16 bits; ours stayed float.
    np.testing.assert_allclose(decoded, reference, atol=1.5 / 32768)


def test_flac_is_lossless(decode, audio_file):
    x = music(1.0, rate=44100, channels=1)
    decoded = read_all(decode(audio_file(1.0, "flac", channels=1, signal=x)))
    np.testing.assert_array_equal(decoded, to_int16(x) / 32768.0)


def test_audio_of_a_video_file_is_decoded(decode, tmp_path, ffmpeg):
    path = ffmpeg_make(
        "-f lavfi -i testsrc=d=1:s=64x48 -f lavfi -i sine=d=1 -shortest -c:a aac",
        tmp_path / "clip.mp4",
    )
    decoder = decode(path)
    assert decoder.info.channels == 1
    assert len(read_all(decoder)) == pytest.approx(44100, abs=2048)


@pytest.mark.parametrize("channels", [1, 6])
def test_channel_counts(decode, tmp_path, channels):
    decoder = decode(write_wav(tmp_path / "c.wav", music(0.5, channels=channels), 44100))
    assert decoder.info.channels == channels
    assert read_all(decoder).shape == (22050, channels)


def test_too_many_channels_is_refused(decode, tmp_path):
    with pytest.raises(DecodeError, match="10 channels"):
        decode(write_wav(tmp_path / "c.wav", np.zeros((100, 10)), 44100))


def not_audio_cases(tmp_path, ffmpeg):
    (tmp_path / "random.mp3").write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / "text.mp3").write_text("this is not audio\n" * 100)
    (tmp_path / "empty.wav").write_bytes(b"")
    write_wav(tmp_path / "no-samples.wav", np.zeros((0, 2)), 44100)
    ffmpeg_make("-f lavfi -i testsrc=d=1:s=64x48", tmp_path / "silent-video.mp4")
    ffmpeg_make("-f lavfi -i testsrc=d=0.1:s=64x48 -frames:v 1", tmp_path / "image.png")
    write_wav(tmp_path / "secret.wav", music(0.5), 44100)
    (tmp_path / "list.m3u8").write_text("#EXTM3U\n#EXTINF:1,\nsecret.wav\n")
    (tmp_path / "list.ffconcat").write_text("ffconcat version 1.0\nfile secret.wav\n")
    return {
        "random.mp3": "could not be decoded",
        "text.mp3": "could not be decoded",
        "empty.wav": "could not be decoded",
        "no-samples.wav": "no audio samples",
        "silent-video.mp4": "no audio stream",
        "image.png": "could not be decoded",
        "list.m3u8": "could not be decoded",
        "list.ffconcat": "could not be decoded",
    }


def test_files_that_are_not_audio_fail_with_a_reason(decode, tmp_path, ffmpeg):
    for name, reason in not_audio_cases(tmp_path, ffmpeg).items():
        with pytest.raises(DecodeError) as caught:
            decode(tmp_path / name)
        assert reason in caught.value.message, name
        assert "Upload an audio file" in caught.value.message
        assert str(tmp_path) not in caught.value.message  # no server paths in messages


def test_a_truncated_mp3_decodes_what_is_there(decode, audio_file):
    path = audio_file(10.0, "mp3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 10])
    frames = len(read_all(decode(path)))
    assert 0.5 * 44100 < frames < 2 * 44100


def test_decoding_stops_at_the_length_limit(decode, tmp_path):
    decoder = decode(write_wav(tmp_path / "long.wav", music(3.0, rate=8000), 8000), max_seconds=1.0)
    assert len(read_all(decoder)) == 8000


def test_a_source_that_never_delivers_is_stopped(decode, tmp_path):
    fifo = tmp_path / "stuck.wav"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(DecodeError, match="stalled"):
        decode(fifo, stall_seconds=0.5)
    assert time.monotonic() - started < 5


def test_kill_ends_the_stream_without_an_error(decode, audio_file):
    decoder = decode(audio_file(5.0, "mp3"))
    assert decoder.read(1000).frame_count() == 1000
    decoder.kill()
    read_all(decoder)  # ends, and raises nothing


def test_nan_and_infinities_become_silence_and_are_counted(decode, tmp_path):
    samples = np.full((8000, 2), 0.25)
    samples[100, 0], samples[200, 1], samples[300, 0] = np.nan, np.inf, -np.inf
    samples[400, 1] = 1e30  # far beyond +24 dBFS
    decoder = decode(write_float_wav(tmp_path / "broken.wav", samples, 8000))
    decoded = read_all(decoder)
    assert np.isfinite(decoded).all()
    assert decoded[100, 0] == decoded[200, 1] == decoded[300, 0] == decoded[400, 1] == 0
    assert decoded[101, 0] == pytest.approx(0.25)
    assert decoder.silenced == 4


def test_a_clean_float_file_silences_nothing(decode, tmp_path):
    decoder = decode(write_float_wav(tmp_path / "hot.wav", music(1.0, rate=8000) * 8, 8000))
    read_all(decoder)  # peaks near +18 dBFS: overs, but on no rail
    assert decoder.silenced == 0


@pytest.mark.parametrize(
    "tag",
    [
        "Duration: 05:00:00.00, start: 0.000000, bitrate: 1 kb/s",
        "x\n  Duration: 00:00:01.00, start: 0.000000, bitrate: 1 kb/s\n"
        "  Stream #0:0: Audio: evilcodec, 8000 Hz, mono",
        "Stream #0:0: Audio: evilcodec",
    ],
)
def test_tags_cannot_fake_the_duration_or_the_codec(decode, tmp_path, ffmpeg, tag):
    source = write_wav(tmp_path / "a.wav", music(30.0, rate=8000), 8000)
    path = tmp_path / "tagged.flac"
    subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(source), "-metadata", f"title={tag}",
         "-metadata", f"artist={tag}", str(path)],
        check=True,
    )  # fmt: skip
    info = decode(path).info
    assert info.duration == pytest.approx(30.0, abs=0.05)
    assert info.codec == "flac"


def test_a_decoder_killed_from_outside_says_so(decode, tmp_path):
    decoder = decode(write_wav(tmp_path / "long.wav", music(30.0, rate=44100), 44100))
    assert decoder.read(1000).frame_count() == 1000
    os.kill(decoder._proc.pid, 9)  # as the kernel's out-of-memory killer would
    with pytest.raises(DecodeError, match=r"killed by signal 9 \(SIGKILL\)"):
        read_all(decoder)
