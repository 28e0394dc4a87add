"""The page's views of issue 16 in a real headless Chromium, against a live server.

processing_progress instead of polling, the pool's workers, A/B against the
original decoded in the browser, the finished result in peaks.js, and the tasks
of this browser across reloads. Each test waits on what the page exposes
(``window.audioPage``) or shows, never on time.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from helpers import write_wav
from test_page import (
    DOCS_SCREENSHOT,
    HEAVY,
    open_page,
    round_trip,
    shoot,
    start_task,
    status,
    wait_until,
)

from audioserver.audio.steps import Block, Param, Step

try:
    from playwright.sync_api import Page, expect
except ImportError:
    if os.environ.get("CI", "").lower() in ("true", "1"):
        raise  # CI runs the browser tests: without playwright they fail, never skip
    pytest.skip("playwright is not installed (requirements-dev.txt)", allow_module_level=True)

pytestmark = pytest.mark.browser


class Pace(Step):
    """A test step that takes a given time a chunk: a task as slow as a test needs."""

    name = "test_pace"
    description = "sleeps a while each chunk"
    params = (Param(name="pause_ms", default=50, min=0, max=1000, unit="ms"),)

    def process(self, block: Block) -> Block:
        time.sleep(self.options["pause_ms"] / 1000)
        return block


Step.registry.pop(Pace.name)  # in the catalogue only while a test asks for it (pace)


@pytest.fixture
def pace() -> Iterator[None]:
    Step.registry[Pace.name] = Pace
    yield
    Step.registry.pop(Pace.name, None)


# A silent first pass of 2 s at least (120 chunks of 15 ms on one worker), then loudness,
# and a second pass of 6 s at least, long enough to stop.
MEASURE_FIRST = [
    ("test_pace", {"pause ms": "15"}),
    ("loudness", {"Target": "-16"}),
    ("test_pace", {"pause ms": "50"}),
]
# 12 s at least on one worker: long enough to reload the page in the middle.
SLOW = [("test_pace", {"pause ms": "100"})]


def task_requests(page: Page) -> list[str]:
    """Every request the page makes for a task's JSON (GET /tasks/<id>), as it happens."""
    seen: list[str] = []
    pattern = re.compile(r"/tasks/[0-9a-f]{32}$")
    page.on("request", lambda r: seen.append(r.url) if pattern.search(r.url) else None)
    return seen


def stop(page: Page) -> dict[str, Any]:
    page.get_by_role("button", name="Stop").click()
    return wait_until(page, "s.phase === 'stopped'")


# -- processing_progress ------------------------------------------------------------------


def test_a_first_pass_shows_its_progress_from_the_event_without_asking_the_server(
    page, make_server, long_audio, pace
):
    server = make_server(WORKERS=1)
    asked = task_requests(page)
    start_task(page, server, long_audio(30), MEASURE_FIRST, chunk="0.25")

    second = wait_until(page, "s.nextIndex >= 4")
    # Each processing_progress of the first pass (stage 0: no chunk yet) moved the bar and
    # said how far the measuring was.
    first_pass = [entry for entry in second["progressLog"] if entry["stage"] == 0]
    assert len(first_pass) >= 3 and all(entry["chunks"] == 0 for entry in first_pass)
    for entry in first_pass:
        assert entry["bar"] == int(entry["progress"] * 100) <= 50
        said = re.fullmatch(
            r"Measuring the whole file first \(a global step\): (\d+) % of the work done\.",
            entry["said"],
        )
        assert said and abs(int(said[1]) - 100 * entry["progress"]) <= 0.5 + 1e-9, entry
    assert first_pass[-1]["progress"] == 0.5  # the first pass's end
    # The bar goes on from half way when the second pass sends its chunks.
    assert second["progress"] >= 50 and second["lastProgress"]["stages"] == 2
    stopped = stop(page)
    # The terminal event carries the summary and the result's link: no GET needed either.
    assert stopped["terminalData"]["summary"] is not None
    expect(page.get_by_role("link", name="Download partial result")).to_be_visible()
    assert asked == [], asked


# -- the pool's workers ---------------------------------------------------------------------


def test_each_worker_has_a_lane_with_its_chunks_and_the_measured_speedup(
    page, make_server, long_audio, screenshots
):
    server = make_server(WORKERS=2)
    start_task(page, server, long_audio(30), HEAVY, chunk="0.25")
    running = wait_until(
        page,
        "s.nextIndex >= 40 && s.playback.playedSeconds > 0.3 && s.original === 'ready' "
        "&& s.workers.speedup !== null",
    )
    assert running["phase"] == "processing"
    shot = shoot(page, screenshots, "10-workers-and-ab")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):  # the README's picture of the page
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    final = wait_until(page, "s.phase === 'complete'", timeout=120_000)
    workers = final["workers"]
    assert workers["pool"] == 2 and workers["chunks"] == 120
    assert [w["name"] for w in workers["workers"]] == ["worker_0", "worker_1"]
    assert all(w["chunks"] > 0 for w in workers["workers"])
    # The speed-up is the work of every chunk over the wall time it took, as shown.
    assert workers["speedup"] == pytest.approx(workers["busySeconds"] / workers["spanSeconds"])
    expect(page.locator("#workers-speedup")).to_have_text(f"{workers['speedup']:.2f}×")
    expect(page.locator("#workers-pool")).to_have_text("2 workers")
    # The two lanes ran at the same time: some chunk of one overlaps one of the other.
    bars = page.evaluate("audioPage.workerBars()")
    assert sorted(bars) == ["worker_0", "worker_1"]
    assert sum(len(lane) for lane in bars.values()) == 120
    assert any(
        a_start < b_end and b_start < a_end
        for a_start, a_end, _ in bars["worker_0"]
        for b_start, b_end, _ in bars["worker_1"]
    )
    # Each lane is drawn: its band of the canvas holds its colour.
    inked = page.evaluate(
        """() => {
            const canvas = document.getElementById("workers");
            const { width, height } = canvas;
            const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
            const colours = [[0x4c, 0xc2, 0xff], [0x3d, 0xdc, 0x84]];
            return colours.map(([r, g, b], lane) => {
                let count = 0;
                const top = Math.floor((lane * height) / 2);
                const bottom = Math.floor(((lane + 1) * height) / 2);
                for (let y = top; y < bottom; y += 1)
                    for (let x = 0; x < width; x += 1) {
                        const i = (y * width + x) * 4;
                        if (data[i] === r && data[i + 1] === g && data[i + 2] === b) count += 1;
                    }
                return count;
            });
        }"""
    )
    assert all(count > 500 for count in inked), inked
    label = page.locator("#workers").get_attribute("aria-label")
    assert "2 workers processed 120 chunks" in label and "speed-up over one worker" in label


# -- A/B --------------------------------------------------------------------------------------


GLIDE = (200.0, 2000.0, 20.0)  # Hz to Hz in seconds
GLIDE_RATE = (GLIDE[1] - GLIDE[0]) / GLIDE[2]  # Hz a second


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """20 s of a sine gliding from 200 Hz to 2 kHz: its frequency tells the position."""
    low, high, seconds = GLIDE
    rate = 48000
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * (low * t + (high - low) * t**2 / (2 * seconds))
    mono = 0.5 * np.sin(phase)
    path = tmp_path_factory.mktemp("sweep") / "sweep.wav"
    return write_wav(path, np.stack([mono, mono], axis=1), rate)


SAMPLE_THE_OUTPUT = """(seconds) => {
    window.abSamples = [];
    window.abDone = false;
    const started = performance.now();
    const tick = () => {
        const level = audioPage.listening();
        const playback = audioPage.status.playback;
        if (level) window.abSamples.push({...level, hearing: playback.hearing});
        if (performance.now() - started < seconds * 1000) requestAnimationFrame(tick);
        else window.abDone = true;
    };
    requestAnimationFrame(tick);
}"""


def hear_both_sides_of(page: Page, switch) -> tuple[list[dict], list[dict]]:
    """Sample the output for a while around switch(); return the samples before and after."""
    page.evaluate(SAMPLE_THE_OUTPUT, 2.0)
    page.wait_for_function("() => window.abSamples.length >= 20")
    switch()
    page.wait_for_function("() => window.abDone")
    samples = page.evaluate("window.abSamples")
    first_after = next(i for i, s in enumerate(samples) if s["hearing"] != samples[0]["hearing"])
    return samples[:first_after], samples[first_after:]


def assert_the_glide_goes_on(before: list[dict], after: list[dict]) -> None:
    """The frequency after the switch is where the glide had got to: the same position.

    Once the analyser's window (8192 frames, 0.17 s) holds only the new version, its
    strongest frequency must be the last one before the switch plus the glide since.
    Starting the other version anywhere else would be off by 90 Hz per second of error.
    """
    last = before[-1]
    settled = next(s for s in after if s["time"] >= after[0]["time"] + 0.25)
    expected = last["peakHz"] + GLIDE_RATE * (settled["time"] - last["time"])
    assert abs(settled["peakHz"] - expected) < 15, (last, settled)


def test_ab_switches_to_the_original_at_the_same_position_without_a_gap(page, live_server, sweep):
    start_task(page, live_server, sweep, [("gain", {"Gain in dB": "-20"})], chunk="0.5")
    ready = wait_until(page, "s.original === 'ready' && s.playback.playedSeconds > 1")
    assert ready["playback"]["hearing"] == "processed"
    assert ready["playback"]["originalsScheduled"] > 0
    expect(page.locator("#ab")).to_be_enabled()

    before, after = hear_both_sides_of(page, lambda: page.get_by_label("Original").check())
    assert {s["hearing"] for s in before} == {"processed"}
    assert {s["hearing"] for s in after} == {"original"}
    # The original is the file itself, 20 dB louder than the processed audio...
    louder = statistics.median(s["rmsDb"] for s in after[10:])
    quieter = statistics.median(s["rmsDb"] for s in before[3:])
    assert 16 < louder - quieter < 24, (quieter, louder)
    # ...never silent on the way (a gap would read far below both)...
    assert min(s["rmsDb"] for s in before[3:] + after) > quieter - 6
    # ...and at the same position: the glide's frequency goes on where it was.
    assert_the_glide_goes_on(before, after)
    expect(page.locator("#ab-status")).to_contain_text("Hearing the original audio")

    # And back, from the keyboard: the radio group moves with the arrow keys.
    page.get_by_label("Original").focus()
    back, forth = hear_both_sides_of(page, lambda: page.keyboard.press("ArrowLeft"))
    assert {s["hearing"] for s in forth} == {"processed"}
    assert min(s["rmsDb"] for s in back[3:] + forth) > quieter - 6
    assert_the_glide_goes_on(back, forth)


# -- the result in peaks.js --------------------------------------------------------------------


PLAYHEAD_X = """() => {
    // The playhead's column: peaks.js draws it in the playhead colour (#ffd166).
    for (const canvas of document.querySelectorAll("#result-zoomview canvas")) {
        const { width, height } = canvas;
        const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
        for (let x = 0; x < width; x += 1) {
            for (let y = Math.floor(height / 2); y < height; y += 4) {
                const i = (y * width + x) * 4;
                if (data[i] === 0xff && data[i + 1] === 0xd1 && data[i + 2] === 0x66)
                    return x / width;
            }
        }
    }
    return null;
}"""


def test_the_finished_result_is_zoomable_in_peaks_with_its_playhead_and_click_to_seek(
    page, live_server, long_audio, screenshots
):
    start_task(page, live_server, long_audio(30), [("normalize", {})], chunk="2")
    wait_until(page, "s.phase === 'complete'")
    whole = wait_until(page, "s.result.state === 'ready' && s.result.end > 0")["result"]
    assert whole["zoom"] == whole["levels"] - 1  # the whole result first
    assert whole["start"] == 0 and 29.5 < whole["end"] < 31.5
    assert whole["duration"] == pytest.approx(30, abs=0.05) and whole["logged"] == []
    expect(page.get_by_role("button", name="Zoom out")).to_be_disabled()
    expect(page.locator("#result-wave-note")).to_contain_text("The whole result")
    assert page.locator("#result-zoomview canvas").count() > 0
    assert page.locator("#result-overview canvas").count() > 0

    page.get_by_role("button", name="Zoom in").click()
    page.get_by_role("button", name="Zoom in").click()
    zoomed = wait_until(page, f"s.result.zoom === {whole['levels'] - 3}")["result"]
    span = zoomed["end"] - zoomed["start"]
    assert span < (whole["end"] - whole["start"]) / 3
    expect(page.locator("#result-wave-note")).to_contain_text(re.compile(r"Showing 0:00\.0 to"))

    # A click on the waveform plays from there; the playhead is drawn where the click was.
    box = page.locator("#result-zoomview").bounding_box()
    page.mouse.click(box["x"] + 0.6 * box["width"], box["y"] + box["height"] / 2)
    target = zoomed["start"] + 0.6 * span
    sought = wait_until(page, f"Math.abs(s.result.time - {target}) < {span / 50}")["result"]
    assert page.evaluate("document.getElementById('result-audio').paused")
    assert sought["start"] == zoomed["start"]  # a click seeks, it does not scroll
    page.wait_for_function(f"() => Math.abs(({PLAYHEAD_X})() - 0.6) < 0.02")

    page.evaluate("document.getElementById('result-audio').play()")
    playing = wait_until(page, f"s.result.time > {target + 0.5}")["result"]
    page.evaluate("document.getElementById('result-audio').pause()")
    moved = page.evaluate(PLAYHEAD_X)
    assert moved > 0.6 and moved == pytest.approx((playing["time"] - zoomed["start"]) / span,
                                                  abs=0.05)  # fmt: skip
    shoot(page, screenshots, "11-result-in-peaks")


# -- recent tasks and reloads --------------------------------------------------------------------


def recent_rows(page: Page) -> list[dict[str, str]]:
    return page.evaluate(
        """() => [...document.querySelectorAll("#recent-list > li")].map((item) => ({
            id: item.dataset.taskId,
            name: item.querySelector(".recent-name").textContent,
            status: item.querySelector(".recent-status").textContent,
            duration: item.querySelector(".recent-duration").textContent,
            links: [...item.querySelectorAll("a")]
                .map((a) => [a.textContent, a.getAttribute("href")]),
        }))"""
    )


def test_recent_tasks_are_listed_with_status_duration_and_links_after_a_reload(
    page, live_server, audio_file, screenshots
):
    first, second = audio_file(2.0), audio_file(3.0)
    start_task(page, live_server, first, [("normalize", {})], chunk="0.5")
    first_id = wait_until(page, "s.phase === 'complete'")["taskId"]
    page.set_input_files("#file", str(second))
    page.get_by_role("button", name="Process").click()
    second_id = wait_until(page, f"s.phase === 'complete' && s.taskId !== '{first_id}'")["taskId"]

    page.reload()
    open_page(page, live_server)  # the page after the reload: nothing of the last run is shown
    expect(page.locator("#recent-list > li")).to_have_count(2)
    rows = recent_rows(page)
    assert [row["id"] for row in rows] == [second_id, first_id]  # the newest first
    assert [row["name"] for row in rows] == [second.name, first.name]
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert [row["duration"] for row in rows] == ["0:03.0", "0:02.0"]
    for row in rows:
        result_link, details_link = f"/tasks/{row['id']}/result", f"/tasks/{row['id']}"
        assert row["links"] == [
            [f"Result of {row['name']}", result_link],
            [f"Details of {row['name']}", details_link],
        ]
        result = requests.get(f"{live_server.url}{result_link}", timeout=30)
        assert result.status_code == 200 and result.content[:4] == b"RIFF"
        details = requests.get(f"{live_server.url}{details_link}", timeout=30).json()
        assert details["status"] == "completed" and details["filename"] == row["name"]
    expect(page.get_by_role("link", name=f"Result of {first.name}")).to_be_visible()
    shoot(page, screenshots, "12-recent-tasks")

    # A task deleted on the server says so at the next load.
    assert requests.delete(f"{live_server.url}/tasks/{first_id}", timeout=10).status_code == 200
    page.reload()
    open_page(page, live_server)
    expect(
        page.locator(f"#recent-list > li[data-task-id='{first_id}'] .recent-status")
    ).to_have_text("gone from the server")
    page.get_by_role("button", name="Forget").click()
    expect(page.locator("#recent-list > li")).to_have_count(0)
    page.reload()
    open_page(page, live_server)
    expect(page.locator("#recent-list > li")).to_have_count(0)


def test_a_reload_while_a_task_processes_takes_up_its_live_view(
    page, make_server, long_audio, pace
):
    server = make_server(WORKERS=1)
    start_task(page, server, long_audio(30), SLOW, chunk="0.25")
    before = wait_until(page, "s.nextIndex >= 12 && s.playback.playedSeconds > 1")
    heard = page.evaluate("JSON.parse(localStorage.getItem('audioserver.current-task'))")
    assert heard["task_id"] == before["taskId"] and heard["heard"] >= 1

    page.reload()
    resumed = wait_until(
        page,
        f"s.taskId === '{before['taskId']}' && s.phase === 'processing' "
        "&& s.nextIndex > 0 && s.playback.buffersScheduled > 0",
    )
    assert resumed["resumed"]["taskId"] == before["taskId"]
    # Subscribed again from the first chunk the reloaded page lacks (all of them), so the
    # waveform is whole; listening goes on from the chunk that was being heard.
    (subscribe,) = [r for r in resumed["subscribes"] if r["ok"]]
    assert subscribe["from_index"] == 0
    play_from = resumed["playFrom"]
    assert play_from >= heard["heard"]
    assert resumed["playback"]["firstFileTime"] == pytest.approx(play_from * 0.25, abs=0.01)
    expect(page.locator("#status")).to_contain_text("Took up")
    row = page.locator(f"#recent-list > li[data-task-id='{before['taskId']}']")
    expect(row.locator(".recent-status")).to_have_text("processing")

    wait_until(page, f"s.nextIndex > {before['nextIndex'] + 4}")
    stopped = stop(page)
    emitted = stopped["terminalData"]["chunks_emitted"]
    round_trip(page)
    after = status(page)
    assert after["indexes"] == list(range(emitted)) and after["duplicates"] == 0
    assert after["chunksDrawn"] == emitted
    expect(row.locator(".recent-status")).to_have_text("stopped")
    assert page.evaluate("localStorage.getItem('audioserver.current-task')") is None

    page.reload()  # a stopped task is not taken up again
    open_page(page, server)
    assert status(page)["taskId"] is None
