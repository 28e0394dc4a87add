"""The full catalogue through a live server: every step, every format, summary, waveform.json."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest
import requests
from helpers import (
    ffmpeg_decode,
    ffmpeg_decode_float,
    ffmpeg_make,
    music,
    pcm16,
    read_wav,
    sine,
    wav_pcm,
    write_float_wav,
)

from audioserver.audio.pcm import AudioSegment
from audioserver.audio.pipeline import Pipeline
from audioserver.segments import process_segment

EVERY_STEP = (
    "highpass=freq=40:order=4,compressor=threshold_db=-24:ratio=3:release_ms=80,"
    "bandpass=low=60:high=15000,lowpass=freq=16000,gain=db=-2,fade_in=seconds=0.5,"
    "resample=rate=48000,normalize=peak_db=-3,fade_out=seconds=0.7,mono,loudness=target=-20"
)


def upload(server, path, **fields) -> dict:
    with open(path, "rb") as file:
        response = requests.post(
            f"{server.url}/upload", files={"file": (path.name, file)}, data=fields, timeout=30
        )
    assert response.status_code == 202, response.text
    return response.json()


def get(server, path: str) -> requests.Response:
    return requests.get(f"{server.url}{path}", timeout=60)


def run(server, listener, path, **fields) -> tuple[dict, list[dict]]:
    task = upload(server, path, sid=listener.sid, **fields)
    event, data = listener.wait_end(task["task_id"])
    assert event == "processing_complete", data
    return data, listener.chunks(task["task_id"])


def test_every_step_in_one_pipeline_equals_whole_file_processing(live_server, listen, audio_file):
    listener = listen(live_server.url)
    path = audio_file(4.0, "flac")
    end, chunks = run(live_server, listener, path, pipeline=EVERY_STEP, chunk_seconds="0.5")
    task = get(live_server, f"/tasks/{end['task_id']}").json()
    assert (task["sample_rate"], task["channels"]) == (48000, 1)
    assert [step["step"] for step in task["pipeline"]] == [
        step.split("=")[0] for step in EVERY_STEP.split(",")
    ]
    result, rate = read_wav(get(live_server, end["result_url"]).content)
    expected, expected_rate = Pipeline.parse(EVERY_STEP)(ffmpeg_decode(path), 44100)
    assert rate == expected_rate == 48000
    assert result.shape == expected.shape == (4 * 48000, 1)
    assert np.max(np.abs(result - np.rint(np.clip(expected, -1, 1) * 32767) / 32768)) <= 1e-4
    assert all(chunk["sample_rate"] == 48000 and chunk["channels"] == 1 for chunk in chunks)
    assert end["summary"]["steps"][-1]["limited_by_peak"] is False
    assert end["summary"]["integrated_lufs"] == pytest.approx(-20, abs=0.1)


@pytest.mark.parametrize(
    ("fmt", "mime", "rate"),
    [("flac", "audio/flac", 44100), ("mp3", "audio/mpeg", 44100), ("ogg", "audio/ogg", 44100),
     ("opus", "audio/ogg", 48000)],
)  # fmt: skip
def test_result_formats_decode_to_the_streamed_audio(
    live_server, listen, audio_file, tmp_path, fmt, mime, rate
):
    listener = listen(live_server.url)
    tones = sine(3.0, freq=440, amplitude=0.3) + sine(3.0, freq=3000, amplitude=0.2)
    end, chunks = run(
        live_server, listener, audio_file(3.0, signal=tones), pipeline="gain=db=-3", format=fmt,
        chunk_seconds="0.5",
    )  # fmt: skip
    response = get(live_server, end["result_url"])
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(mime)
    assert f'filename="audio-0_processed.{fmt}"' in response.headers["Content-Disposition"]
    saved = tmp_path / f"result.{fmt}"
    saved.write_bytes(response.content)
    decoded = ffmpeg_decode(saved)
    streamed = np.concatenate([pcm16(c["audio"], 2) for c in chunks]) / 32768
    if fmt == "flac":
        assert np.array_equal(decoded, streamed)  # lossless: the same samples
        return
    assert abs(len(decoded) - round(3.0 * rate)) <= 1152
    level = lambda x: 10 * np.log10(np.mean(np.square(x)))  # noqa: E731
    assert level(decoded) == pytest.approx(level(streamed), abs=0.5)


def test_stopped_task_in_another_format_keeps_the_emitted_part(
    live_server, listen, audio_file, tmp_path
):
    listener = listen(live_server.url)
    task = upload(
        live_server, audio_file(40.0, "wav", rate=48000), sid=listener.sid, format="ogg",
        chunk_seconds="0.25", pipeline="highpass=freq=10:order=8,lowpass=freq=12000:order=8",
    )  # fmt: skip
    listener.wait_chunk(task["task_id"], 3)
    requests.post(
        f"{live_server.url}/stop-processing", json={"task_id": task["task_id"]}, timeout=10
    )
    _, stopped = listener.wait_end(task["task_id"])
    response = get(live_server, f"/tasks/{task['task_id']}/result")
    assert response.status_code == 200 and response.headers["Content-Type"] == "audio/ogg"
    path = tmp_path / "partial.ogg"
    path.write_bytes(response.content)
    emitted = stopped["chunks_emitted"] * 0.25 * 48000
    assert abs(len(ffmpeg_decode(path)) - emitted) < 0.05 * 48000


def test_summary_agrees_with_an_independent_loudness_meter(live_server, listen, audio_file):
    listener = listen(live_server.url)
    end, _ = run(live_server, listener, audio_file(8.0), pipeline="gain=db=-4", chunk_seconds="0.7")
    summary = end["summary"]
    result, rate = read_wav(get(live_server, end["result_url"]).content)
    assert summary["integrated_lufs"] == pytest.approx(
        pyloudnorm.Meter(rate).integrated_loudness(result), abs=0.05
    )
    assert summary["sample_peak_db"] == pytest.approx(
        20 * np.log10(np.max(np.abs(result))), abs=0.01
    )
    assert summary["true_peak_db"] >= summary["sample_peak_db"]
    assert summary["loudness_range_lu"] is not None and summary["loudness_range_lu"] >= 0
    assert summary["duration"] == pytest.approx(8.0)
    task = get(live_server, f"/tasks/{end['task_id']}").json()
    assert task["summary"] == summary


def test_loudness_says_when_the_peak_limit_lowered_the_gain(live_server, listen, audio_file):
    listener = listen(live_server.url)
    clicks = np.zeros((3 * 44100, 2))
    clicks[::4410] = 0.5  # spiky: its peak would pass -1 dBFS long before -10 LUFS
    end, _ = run(live_server, listener, audio_file(3.0, signal=clicks),
                 pipeline="loudness=target=-10:max_peak=-1")  # fmt: skip
    (report,) = end["summary"]["steps"]
    assert report["step"] == "loudness" and report["limited_by_peak"] is True
    assert end["summary"]["sample_peak_db"] == pytest.approx(-1.0, abs=0.01)
    assert end["summary"]["integrated_lufs"] < -10.5


def test_waveform_json_is_audiowaveform_version_2(live_server, listen, audio_file):
    listener = listen(live_server.url)
    end, _ = run(live_server, listener, audio_file(2.5), pipeline="gain", chunk_seconds="0.33")
    response = get(live_server, f"/tasks/{end['task_id']}/waveform.json")
    assert response.status_code == 200
    waveform = response.json()
    assert set(waveform) == {"version", "channels", "sample_rate", "samples_per_pixel", "bits",
                             "length", "data"}  # fmt: skip
    assert (waveform["version"], waveform["channels"], waveform["bits"]) == (2, 1, 8)
    assert (waveform["sample_rate"], waveform["samples_per_pixel"]) == (44100, 441)
    assert waveform["length"] == 250 and len(waveform["data"]) == 500
    # Chunks of 0.33 s split bins; the merged bins equal a direct computation on the result.
    result = read_wav(get(live_server, end["result_url"]).content)[0]
    bins = result[: 250 * 441].reshape(250, 441, 2)
    direct = np.stack([bins.min(axis=(1, 2)), bins.max(axis=(1, 2))], axis=1).ravel()
    assert np.max(np.abs(np.array(waveform["data"]) - np.rint(direct * 127))) <= 1


def test_waveform_of_an_unfinished_task_is_409(live_server, listen, audio_file):
    listener = listen(live_server.url)
    task = upload(
        live_server, audio_file(30.0, rate=48000), sid=listener.sid, chunk_seconds="0.25",
        pipeline="highpass=freq=10:order=8,lowpass=freq=12000:order=8",
    )  # fmt: skip
    listener.wait_chunk(task["task_id"], 1)
    response = get(live_server, f"/tasks/{task['task_id']}/waveform.json")
    assert (response.status_code, response.json()["error"]) == (409, "task_not_ready")
    assert get(live_server, "/tasks/nope/waveform.json").status_code == 404


def test_streamed_audio_equals_the_wav_result_for_every_step(live_server, listen, audio_file):
    listener = listen(live_server.url)
    end, chunks = run(live_server, listener, audio_file(3.0, "mp3", signal=music(3.0) * 0.5),
                      pipeline=EVERY_STEP, chunk_seconds="0.25")  # fmt: skip
    assert b"".join(c["audio"] for c in chunks) == wav_pcm(
        get(live_server, end["result_url"]).content
    )


def test_upload_rejects_bad_step_parameters_by_name(live_server, audio_file):
    path = audio_file(1.0)
    with open(path, "rb") as file:
        response = requests.post(
            f"{live_server.url}/upload", files={"file": file},
            data={"pipeline": "resample=rate=8000,lowpass=freq=5000"}, timeout=30,
        )  # fmt: skip
    assert response.status_code == 400
    body = response.json()
    assert (body["step"], body["parameter"]) == ("lowpass", "freq")
    assert "8000 Hz" in body["message"]


def test_sines_come_out_at_the_same_frequency_after_resampling(live_server, listen, audio_file):
    listener = listen(live_server.url)
    end, _ = run(live_server, listener, audio_file(2.0, signal=sine(2.0, freq=997)),
                 pipeline="resample=rate=16000")  # fmt: skip
    result, rate = read_wav(get(live_server, end["result_url"]).content)
    spectrum = np.abs(np.fft.rfft(result[:, 0] * np.hanning(len(result))))
    assert rate == 16000
    assert np.fft.rfftfreq(len(result), 1 / rate)[np.argmax(spectrum)] == pytest.approx(997, abs=1)


def peak_db(samples: np.ndarray) -> float:
    return 20 * np.log10(np.max(np.abs(samples)))


def test_overs_of_a_float_wav_survive_to_the_result(live_server, listen, tmp_path):
    listener = listen(live_server.url)
    loud = write_float_wav(tmp_path / "loud.wav", sine(3.0, amplitude=2.0), 44100)  # +6 dBFS
    end, _ = run(live_server, listener, loud, pipeline="gain=db=-12", chunk_seconds="0.5")
    result, _ = read_wav(get(live_server, end["result_url"]).content)
    # -6 dBFS, where a decode clipped at full scale would give -12.
    assert peak_db(result) == pytest.approx(6.02 - 12, abs=0.01)
    assert end["summary"]["sample_peak_db"] == pytest.approx(6.02 - 12, abs=0.01)


def test_overs_of_an_mp3_survive_to_the_result(live_server, listen, tmp_path):
    listener = listen(live_server.url)
    tones = sine(3.0, amplitude=1.6) + sine(3.0, freq=3000, amplitude=0.4)  # overs to +6 dBFS
    loud = write_float_wav(tmp_path / "loud.wav", tones, 44100)
    mp3 = ffmpeg_make(f"-i {loud} -c:a libmp3lame -b:a 192k", tmp_path / "loud.mp3")
    source_peak = peak_db(ffmpeg_decode_float(mp3))  # ffmpeg's own float decode
    assert source_peak > 4.0
    end, _ = run(live_server, listener, mp3, pipeline="gain=db=-12", chunk_seconds="0.5")
    result, _ = read_wav(get(live_server, end["result_url"]).content)
    assert peak_db(result) == pytest.approx(source_peak - 12, abs=0.01)


@pytest.mark.parametrize(
    ("pipeline", "chunk_seconds"),
    [(EVERY_STEP, 0.5), ("gain=db=20,highpass=freq=80,loudness=target=-14", 2.0)],
)
def test_process_segment_equals_the_servers_result(
    live_server, listen, audio_file, pipeline, chunk_seconds
):
    listener = listen(live_server.url)
    path = audio_file(4.5, "wav", signal=music(4.5, seed=7))
    end, chunks = run(
        live_server, listener, path, pipeline=pipeline, chunk_seconds=str(chunk_seconds)
    )
    with open(path, "rb") as file:
        segment = AudioSegment.from_wav(file)
    processed, summary = process_segment(segment, pipeline, chunk_seconds=chunk_seconds)
    task = get(live_server, f"/tasks/{end['task_id']}").json()
    assert (processed.frame_rate, processed.channels) == (task["sample_rate"], task["channels"])
    assert processed.raw_data == wav_pcm(get(live_server, end["result_url"]).content)
    assert processed.raw_data == b"".join(chunk["audio"] for chunk in chunks)
    assert summary == end["summary"]
