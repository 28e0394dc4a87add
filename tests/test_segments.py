"""process_segment: pydub segments in, the server's samples and summary out."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest
from helpers import Recorder, music, pcm16, read_wav, to_int16, write_wav

from audioserver.audio.ffmpeg import find_ffmpeg
from audioserver.audio.pcm import AudioSegment
from audioserver.audio.pipeline import Pipeline
from audioserver.exceptions import ParameterError
from audioserver.segments import process_segment, processed_chunks
from audioserver.tasks import TaskEngine, TaskOptions

RATE = 22050
PIPELINES = [
    "",
    "normalize",
    "highpass=freq=80,loudness=target=-14",
    "gain=db=30,normalize=peak_db=-3",  # +30 dB before a global step: far over full scale
    "compressor=threshold_db=-30:ratio=4,resample=rate=16000,fade_out=seconds=0.5,mono,"
    "loudness=target=-20,fade_in=seconds=0.3",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    return write_wav(folder / "music.wav", music(5.3, rate=RATE, seed=11), RATE)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = TaskEngine(data_dir=tmp_path_factory.mktemp("data"), ffmpeg=find_ffmpeg(), workers=2)
    engine.publisher = Recorder()
    yield engine
    engine.shutdown()


def load(path) -> AudioSegment:
    """Read a WAV with pydub (given a path, pydub leaves the file open)."""
    with open(path, "rb") as file:
        return AudioSegment.from_wav(file)


def server_result(engine, tmp_path, source, spec, chunk_seconds):
    """Run a file through the engine; return its result WAV, summary and streamed chunks."""
    recorder = engine.publisher
    sid = recorder.connect(f"client-{tmp_path.name}")
    upload = tmp_path / "upload"
    shutil.copy(source, upload)
    options = TaskOptions(pipeline=Pipeline.parse(spec), chunk_seconds=chunk_seconds)
    task = engine.create(upload, filename="music.wav", options=options, subscriber=sid)
    event, data = recorder.wait_end(sid, task.id)
    assert event == "processing_complete", data
    assert task.retired.wait(30)
    return task.result_path.read_bytes(), data["summary"], recorder.chunks(sid, task.id)


@pytest.mark.parametrize("spec", PIPELINES)
@pytest.mark.parametrize("chunk_seconds", [2.0, 0.7])
def test_process_segment_gives_the_servers_samples_and_summary(
    engine, tmp_path, source, spec, chunk_seconds
):
    wav, summary, streamed = server_result(engine, tmp_path, source, spec, chunk_seconds)
    expected, rate = read_wav(wav)
    segment = load(source)
    processed, got_summary = process_segment(segment, spec, chunk_seconds=chunk_seconds)
    assert isinstance(processed, AudioSegment)
    assert (processed.frame_rate, processed.channels, processed.sample_width) == (
        rate, expected.shape[1], 2
    )  # fmt: skip
    got = pcm16(processed.raw_data, processed.channels)
    np.testing.assert_array_equal(got, np.rint(expected * 32768).astype("<i2"))
    assert got_summary == summary
    # And chunk by chunk: what the server streamed.
    chunks = list(processed_chunks(segment, spec, chunk_seconds=chunk_seconds))
    assert [chunk.raw_data for chunk in chunks] == [chunk["audio"] for chunk in streamed]


@pytest.mark.parametrize("spec", PIPELINES)
def test_process_segment_equals_whole_file_processing(source, spec):
    x, _ = read_wav(source)
    expected, rate = Pipeline.parse(spec)(x, RATE)
    processed, _ = process_segment(load(source), spec, chunk_seconds=0.6)
    assert processed.frame_rate == rate
    got = pcm16(processed.raw_data, processed.channels) / 32768.0
    assert got.shape == expected.shape
    # Within the contract's 1e-4 (a 16-bit step is 3e-5): overs between stages are kept.
    assert np.max(np.abs(got - np.clip(expected, -1, 1))) <= 1e-4


def test_processed_chunks_come_in_order_and_the_summary_after_the_last(source):
    segment = load(source)
    chunks = processed_chunks(segment, "highpass=freq=100,gain=db=-6", chunk_seconds=1.0)
    assert (chunks.sample_rate, chunks.channels) == (RATE, 2)
    first = next(chunks)
    assert isinstance(first, AudioSegment) and first.frame_count() == RATE
    assert chunks.summary is None
    rest = list(chunks)
    assert [chunk.frame_count() for chunk in rest] == [RATE] * 4 + [int(0.3 * RATE)]
    assert chunks.summary["duration"] == pytest.approx(5.3)
    whole, summary = process_segment(segment, "highpass=freq=100,gain=db=-6", chunk_seconds=1.0)
    assert b"".join(chunk.raw_data for chunk in [first, *rest]) == whole.raw_data
    assert summary == chunks.summary


@pytest.mark.parametrize("width", [1, 2, 4])
def test_every_pydub_sample_width_is_read_at_its_own_full_scale(width):
    x = music(2.0, rate=8000, channels=1, seed=2)
    top = 2 ** (8 * width - 1)
    pcm = np.clip(np.rint(x * top), -top, top - 1).astype({1: "i1", 2: "<i2", 4: "<i4"}[width])
    segment = AudioSegment(data=pcm.tobytes(), sample_width=width, frame_rate=8000, channels=1)
    processed, summary = process_segment(segment, "lowpass=freq=2000,gain=db=-3")
    expected, _ = Pipeline.parse("lowpass=freq=2000,gain=db=-3")(pcm / top, 8000)
    got = pcm16(processed.raw_data, 1) / 32768.0
    assert np.max(np.abs(got - expected)) <= 1.01 / 32768  # 16-bit rounding, nothing else
    assert summary["sample_peak_db"] == pytest.approx(20 * np.log10(np.max(np.abs(got))), abs=0.01)


def test_a_pipeline_object_is_left_as_it_was_given(source):
    pipeline = Pipeline.parse("normalize=peak_db=-2")
    process_segment(load(source), pipeline)
    assert pipeline.steps[0].sample_rate is None  # not bound to this segment's rate


def test_stopping_early_leaves_no_file(source, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    chunks = processed_chunks(load(source), "gain=db=6,loudness", chunk_seconds=1)
    next(chunks)  # the first stage has run and spooled
    assert [path.name[:12] for path in tmp_path.iterdir()] == ["audioserver-"]
    chunks.close()
    assert list(tmp_path.iterdir()) == []


def sixteen_bit(seconds: float) -> AudioSegment:
    pcm = to_int16(music(seconds, rate=8000)).tobytes()
    return AudioSegment(data=pcm, sample_width=2, frame_rate=8000, channels=2)


@pytest.mark.parametrize(
    ("segment", "pipeline", "options", "message"),
    [
        (b"RIFF", "normalize", {}, "must be a pydub AudioSegment"),
        (sixteen_bit(0.0), "normalize", {}, "holds no audio"),
        (sixteen_bit(1.0), "normalize", {"chunk_seconds": 0}, "chunk_seconds must be"),
        (sixteen_bit(1.0), "normalize", {"chunk_seconds": float("nan")}, "chunk_seconds must be"),
        (sixteen_bit(1.0), "normalize", {"chunk_seconds": "2"}, "chunk_seconds must be"),
        (sixteen_bit(1.0), "echo", {}, "unknown step 'echo'"),
        (sixteen_bit(1.0), "highpass=freq=5000", {}, "0.49 x the sample rate"),
    ],
)
def test_bad_input_is_a_parameter_error_that_says_what_is_wrong(
    segment, pipeline, options, message
):
    with pytest.raises(ParameterError, match=message):
        process_segment(segment, pipeline, **options)
