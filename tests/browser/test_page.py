"""The page at / in a real headless Chromium, against a live server.

Each test waits on conditions the page exposes (``window.audioPage.status``,
read-only) or on what it shows, never on time. Screenshots of each state go to
test-artifacts/browser/ for a person to look at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from helpers import ffmpeg_decode

try:
    from playwright.sync_api import Page, expect
except ImportError:
    if os.environ.get("CI", "").lower() in ("true", "1"):
        raise  # CI runs the browser tests: without playwright they fail, never skip
    pytest.skip("playwright is not installed (requirements-dev.txt)", allow_module_level=True)

HEAVY = [
    ("highpass", {"Frequency": "10", "Order": "8"}),
    ("lowpass", {"Frequency": "12000", "Order": "8"}),
]
# Slower still (everything after the resampler at four times the rate): a task that stays
# stoppable for many seconds, however long a screenshot takes on a busy machine.
STOPPABLE = [
    ("resample", {"Sample rate": "192000"}),
    *HEAVY,
    ("compressor", {"Release": "500", "Make-up gain": "6"}),
]
STOPPABLE_FRAMES = 48000  # a 0.25 s chunk at 192 kHz
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "page-processing.png"

pytestmark = pytest.mark.browser


# -- driving the page ------------------------------------------------------------


def open_page(page: Page, server) -> None:
    page.goto(server.url)
    page.wait_for_function(
        "() => window.audioPage && audioPage.status.phase === 'idle' && audioPage.status.connected"
    )


def status(page: Page) -> dict[str, Any]:
    return page.evaluate("audioPage.status")


def wait_until(page: Page, condition: str, *, timeout: float = 30_000) -> dict[str, Any]:
    """Wait for a JavaScript condition on ``s`` (the page's status); return the status.

    The condition goes as a function: a bare expression would be eval'ed in the
    page, which its Content-Security-Policy forbids.
    """
    page.wait_for_function(
        f"() => {{ const s = audioPage.status; return {condition}; }}", timeout=timeout
    )
    return status(page)


def choose(page: Page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    expect(page.locator("#fact-name")).to_have_text(path.name)


def build_pipeline(page: Page, steps: list[tuple[str, dict[str, str]]]) -> None:
    """Clear the pipeline, then add each (step, {label: value}) with the page's own controls."""
    page.get_by_role("button", name="Clear").click()
    for position, (name, values) in enumerate(steps):
        page.get_by_label("Add a step").select_option(name)
        page.get_by_role("button", name="Add", exact=True).click()
        card = page.locator("#steps > li").nth(position)
        for label, value in values.items():
            card.get_by_label(label).fill(value)
    expect(page.locator("#steps > li")).to_have_count(len(steps))


def process(page: Page) -> None:
    page.get_by_role("button", name="Process").click()


def start_task(
    page: Page, server, path: Path, steps: list[tuple[str, dict[str, str]]], *, chunk: str
) -> None:
    """Open the page, choose the file, build the pipeline, set the chunk length, process."""
    open_page(page, server)
    choose(page, path)
    build_pipeline(page, steps)
    page.get_by_label("Chunk length").select_option(chunk)
    process(page)


def shoot(page: Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.evaluate("window.scrollTo(0, 0)")  # the monitor is sticky: show the page from its top
    page.screenshot(path=str(path), full_page=True)
    return path


def round_trip(page: Page) -> None:
    """An acked event through the page's socket, then two frames: whatever was sent is drawn."""
    page.evaluate(
        """() => new Promise((resolve) => audioPage.socket.timeout(5000)
               .emit("unsubscribe", {task_id: "none"}, () => resolve()))"""
    )
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")


def download(server, page: Page, folder: Path, name: str) -> Path:
    href = page.locator("#download").get_attribute("href")
    response = requests.get(f"{server.url}{href}", timeout=30)
    assert response.status_code == 200
    path = folder / name
    path.write_bytes(response.content)
    return path


def figure(text: str) -> float:
    """A number the page wrote (with a typographic minus)."""
    return float(re.search(r"[−-]?\d+(\.\d+)?", text).group().replace("−", "-"))


# -- the tests ----------------------------------------------------------------------


def test_a_two_step_pipeline_runs_to_completion(
    page, live_server, audio_file, screenshots, tmp_path
):
    path = audio_file(6.0, "wav")
    open_page(page, live_server)
    choose(page, path)
    build_pipeline(page, [("highpass", {"Frequency": "80"}), ("loudness", {"Target": "-16"})])
    page.get_by_label("Chunk length").select_option("0.5")
    page.get_by_label("Result format").select_option("flac")
    shoot(page, screenshots, "1-ready")
    process(page)

    final = wait_until(page, "s.phase === 'complete'")
    expect(page.locator("#progress-percent")).to_have_text("100 %")
    assert page.locator("#progress").evaluate("bar => bar.value") == 100
    assert final["indexes"] == list(range(12)) and final["duplicates"] == 0
    assert final["chunksDrawn"] == 12
    assert page.evaluate("audioPage.inkedPixels()") > 5000  # the waveform is drawn
    expect(page.locator("#fact-duration")).to_have_text("0:06.0")
    expect(page.locator("#fact-rate")).to_have_text("44.1 kHz")
    expect(page.locator("#fact-channels")).to_have_text("stereo")
    lufs = page.locator("#summary-lufs").inner_text()
    assert re.fullmatch(r"[−-]?\d+\.\d LUFS", lufs) and abs(figure(lufs) + 16) < 0.5
    assert "dBTP" in page.locator("#summary-true-peak").inner_text()
    expect(page.locator("#summary-duration")).to_have_text("0:06.0")
    shoot(page, screenshots, "3-complete")

    result = ffmpeg_decode(download(live_server, page, tmp_path, "result.flac"))
    assert result.shape == (6 * 44100, 2) and np.abs(result).max() > 0.05


def test_stop_halfway_shows_the_stopped_state_and_draws_nothing_more(
    page, make_server, long_audio, screenshots, tmp_path
):
    server = make_server(WORKERS=1)
    start_task(page, server, long_audio(30), STOPPABLE, chunk="0.25")
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    running = wait_until(page, "s.nextIndex >= 24 && s.playback.playedSeconds > 0.2")
    assert running["phase"] == "processing"
    shoot(page, screenshots, "2-processing")
    page.get_by_role("button", name="Stop").click()

    stopped = wait_until(page, "s.phase === 'stopped'")
    emitted = stopped["terminalData"]["chunks_emitted"]
    task = requests.get(f"{server.url}/tasks/{stopped['taskId']}", timeout=10).json()
    assert task["status"] == "stopped" and task["chunks_done"] == emitted
    assert 24 <= emitted < task["chunks_total"] == 120
    round_trip(page)
    after = status(page)
    assert after["phase"] == "stopped"
    assert after["indexes"] == list(range(emitted)) and after["chunksDrawn"] == emitted
    assert after["playback"]["stopped"] and after["playback"]["buffersPlaying"] == 0
    expect(page.locator("#status")).to_contain_text(f"Stopped after {emitted} chunks")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    expect(page.get_by_role("button", name="Process")).to_be_enabled()
    expect(page.get_by_role("link", name="Download partial result")).to_be_visible()
    shoot(page, screenshots, "4-stopped")

    partial = ffmpeg_decode(download(server, page, tmp_path, "partial.wav"))
    assert partial.shape == (emitted * STOPPABLE_FRAMES, 2)


def test_an_undecodable_file_shows_the_servers_415_message(
    page, live_server, screenshots, tmp_path
):
    junk = tmp_path / "noise.mp3"
    junk.write_bytes(np.random.default_rng(5).bytes(6000))
    expected = requests.post(
        f"{live_server.url}/upload", files={"file": (junk.name, junk.read_bytes())}, timeout=30
    ).json()["message"]
    open_page(page, live_server)
    # Dropped on the zone this time (a file made inside the page), rather than chosen.
    transfer = page.evaluate_handle(
        """(bytes) => {
            const transfer = new DataTransfer();
            const file = new File([new Uint8Array(bytes)], "noise.mp3", {type: "audio/mpeg"});
            transfer.items.add(file);
            return transfer;
        }""",
        list(junk.read_bytes()),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#fact-name")).to_have_text("noise.mp3")
    process(page)

    expect(page.locator("#file-error")).to_have_text(expected)
    assert "could not be decoded as audio" in expected
    expect(page.locator("#file")).to_have_attribute("aria-invalid", "true")
    assert status(page)["phase"] == "ready" and status(page)["taskId"] is None
    expect(page.get_by_role("button", name="Process")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    shoot(page, screenshots, "5-error-415")


def test_out_of_range_values_are_refused_here_and_the_servers_400_shown_beside_the_field(
    page, live_server, audio_file, screenshots
):
    open_page(page, live_server)
    choose(page, audio_file(1.0))
    build_pipeline(page, [("highpass", {"Order": "9"})])
    card = page.locator("#steps > li").first
    process(page)
    expect(
        card.locator("#" + card.get_by_label("Frequency").get_attribute("id") + "-error")
    ).to_have_text(re.compile("Required"))
    expect(card.get_by_label("Order")).to_have_attribute("aria-invalid", "true")
    expect(card.get_by_label("Frequency")).to_be_focused()
    assert status(page)["taskId"] is None  # nothing was sent

    # In the catalogue's range but above 0.49 x 44.1 kHz: the server says so, next to the field.
    card.get_by_label("Frequency").fill("30000")
    card.get_by_label("Order").fill("4")
    process(page)
    frequency_error = card.locator(
        "#" + card.get_by_label("Frequency").get_attribute("id") + "-error"
    )
    expect(frequency_error).to_contain_text("0.49 x the sample rate")
    expect(card.get_by_label("Frequency")).to_be_focused()
    assert status(page)["phase"] == "ready"
    shoot(page, screenshots, "6-error-400")


def test_playback_starts_before_processing_ends(page, make_server, long_audio):
    server = make_server(WORKERS=1)
    start_task(page, server, long_audio(30), STOPPABLE, chunk="0.25")

    heard = wait_until(page, "s.soundAt !== null")
    assert heard["phaseAtSound"] == "processing" and heard["terminalAt"] is None
    assert heard["chunksAtSound"] < heard["chunksTotal"] == 120
    playing = wait_until(page, "s.playback.playedSeconds > 0.5")
    playback = playing["playback"]
    assert playing["phase"] == "processing"
    assert playback["contextState"] == "running" and playback["sampleRate"] == 192000
    assert playback["buffersScheduled"] >= 2 and playback["underruns"] == 0
    page.get_by_role("button", name="Stop").click()
    wait_until(page, "s.phase === 'stopped'")


def test_a_dropped_connection_resubscribes_from_the_next_chunk(
    page, live_server, long_audio, screenshots
):
    start_task(page, live_server, long_audio(30), HEAVY, chunk="0.5")
    wait_until(page, "s.nextIndex >= 5")
    dropped_at = page.evaluate(
        "(() => { audioPage.socket.io.engine.close(); return audioPage.status.nextIndex; })()"
    )

    final = wait_until(page, "s.phase === 'complete'")
    assert final["disconnects"] >= 1 and final["connects"] >= 2
    resumed = [record for record in final["subscribes"] if record["from_index"] > 0]
    assert resumed and resumed[0]["ok"] is True and resumed[0]["from_index"] >= dropped_at
    assert final["terminalData"]["chunks"] == 60
    assert final["indexes"] == list(range(60)) and final["duplicates"] == 0
    expect(page.locator("#progress-percent")).to_have_text("100 %")
    shoot(page, screenshots, "7-reconnected-complete")


def test_the_pipeline_editor_works_from_the_keyboard(page, live_server):
    open_page(page, live_server)
    page.get_by_role("button", name="Podcast").click()
    steps = page.locator("#steps > li")
    expect(steps).to_have_count(2)
    expect(steps.first.get_by_label("Frequency")).to_have_value("80")
    expect(steps.nth(1).get_by_label("Target")).to_have_value("-16")
    page.get_by_role("button", name="Move up step 2, Loudness").focus()
    page.keyboard.press("Enter")
    expect(steps.first).to_contain_text("Loudness")
    expect(page.get_by_role("button", name="Move down step 1, Loudness")).to_be_focused()
    page.keyboard.press("Shift+Tab")  # from "move down" back past the disabled "move up"
    page.get_by_role("button", name="Remove step 2, High-pass").focus()
    page.keyboard.press("Space")
    expect(steps).to_have_count(1)
    page.get_by_label("Add a step").focus()
    page.keyboard.press("End")  # the last step in the menu
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(steps).to_have_count(2)
    assert page.evaluate("document.activeElement.closest('#steps > li') !== null")


def test_the_page_fits_a_phone(page, live_server, audio_file, screenshots):
    page.set_viewport_size({"width": 390, "height": 844})
    open_page(page, live_server)
    choose(page, audio_file(2.0))
    process(page)
    wait_until(page, "s.phase === 'complete'")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shoot(page, screenshots, "8-phone-complete")


def test_a_file_over_the_size_limit_is_refused_before_it_is_uploaded(page, make_server, audio_file):
    server = make_server(MAX_UPLOAD_MB=0.1)
    open_page(page, server)
    choose(page, audio_file(3.0))
    process(page)

    expect(page.locator("#file-error")).to_contain_text("the server takes at most")
    assert status(page)["phase"] == "ready"
    expect(page.get_by_role("button", name="Process")).to_be_enabled()
    # The page knew the limit (GET /pipeline/steps): nothing was sent.
    # (the label, not the digits: "413" also turns up inside a timestamp now and then)
    assert 'status="413"' not in requests.get(f"{server.url}/metrics", timeout=10).text


def test_a_busy_server_answers_503_and_process_waits_for_retry_after(
    page, make_server, audio_file, test_steps
):
    server = make_server(MAX_ACTIVE_TASKS=1, MAX_QUEUED_TASKS=0)
    with open(audio_file(1.0), "rb") as file:  # a task that holds the only slot (test_count)
        busy = requests.post(
            f"{server.url}/upload",
            files={"file": ("busy.wav", file)},
            data={"pipeline": "test_count"},
        )
    assert busy.status_code == 202
    open_page(page, server)
    choose(page, audio_file(1.0))
    process(page)

    expect(page.locator("#process-error")).to_contain_text("at capacity")
    expect(page.locator("#process-error")).to_contain_text(re.compile(r"again in \d s"))
    expect(page.get_by_role("button", name="Process")).to_be_disabled()
    assert status(page)["phase"] == "ready" and status(page)["taskId"] is None


def test_a_processing_error_is_shown_and_the_page_is_not_stuck(
    page, live_server, audio_file, test_steps, screenshots
):
    explode = [("test_explode", {"at": "100000"})]  # fails in the third second
    start_task(page, live_server, audio_file(3.0), explode, chunk="0.5")

    failed = wait_until(page, "s.phase === 'failed'")
    assert failed["terminal"] == "processing_error"
    expect(page.locator("#process-error")).to_have_text(
        f"Processing failed: {failed['terminalData']['message']}"
    )
    expect(page.get_by_role("button", name="Process")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    shoot(page, screenshots, "9-error-processing")


def test_a_hostile_filename_is_shown_as_text_and_never_run(page, live_server, audio_file, tmp_path):
    name = '<img src=x onerror="window.pwned=1">&amp;.wav'
    hostile = tmp_path / name
    hostile.write_bytes(audio_file(1.0).read_bytes())
    open_page(page, live_server)
    choose(page, hostile)
    expect(page.locator("#fact-name")).to_have_text(name)
    process(page)
    wait_until(page, "s.phase === 'complete'")
    assert page.evaluate("window.pwned === undefined")
    assert page.locator("img[src='x']").count() == 0
    expect(page.locator("#fact-name")).to_have_text(name)
