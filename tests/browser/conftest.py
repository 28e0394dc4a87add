"""Fixtures for the page tests: Debian's chromium, headless, driven by Playwright.

Playwright's own browser download does not work here, so the tests launch the
system's chromium (``CHROMIUM``, default /usr/bin/chromium; ``./test.sh``
installs it with apt-get when it can). Without it the tests skip, except under
``CI=true``, where a missing browser is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import music, write_wav

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The page's AudioContext must run without a click on a real screen.
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
DESKTOP = {"width": 1440, "height": 1000}


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the browser tests must run."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason} (CI=true: the browser tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One chromium for the session, on a fresh profile folder."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (scripts/setup.sh requirements-dev.txt)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no chromium at {CHROMIUM} (as root: apt-get install chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=DESKTOP,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser_context) -> Iterator[Any]:
    """A fresh tab; the test fails if the page throws, or does what its CSP forbids."""
    tab = browser_context.new_page()
    tab.set_viewport_size(DESKTOP)
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield tab
    tab.close()
    assert not errors, f"the page threw or broke its Content-Security-Policy: {errors}"


@pytest.fixture(scope="session")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Callable[[float], Path]:
    """Long files for tasks worth stopping: long_audio(seconds) is music() at 48 kHz, WAV.

    Each length is made once per session: the signal takes a while to compute.
    """
    folder = tmp_path_factory.mktemp("long-audio")
    made: dict[float, Path] = {}

    def make(seconds: float) -> Path:
        if seconds not in made:
            path = folder / f"music-{seconds:g}s.wav"
            made[seconds] = write_wav(path, music(seconds, rate=48000), 48000)
        return made[seconds]

    return make


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder for the tests' screenshots (test-artifacts/browser, gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
