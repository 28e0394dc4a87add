"""Progress bars (tqdm) and printing lines that do not tear them."""

from __future__ import annotations

import sys
import time
from typing import IO

from tqdm import tqdm

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| ETA {remaining}{postfix}"
REDRAW_SECONDS = 0.1  # at most this often while uploading (every block sent calls uploading)
MB = 1024 * 1024  # as the server's MAX_UPLOAD_MB counts


class _Bar(tqdm):  # type: ignore[type-arg]  # generic in its stubs, not at run time
    monitor_interval = 0  # no monitor thread: every bar is refreshed by its own job


def say(text: str, *, file: IO[str] | None = None) -> None:
    """Print a line above the progress bars (stdout unless told)."""
    tqdm.write(text, file=file or sys.stdout)


def notice(text: str) -> None:
    """Print a line about the client's own doings (reconnects, retries) to stderr."""
    say(f"audio-client: {text}", file=sys.stderr)


class ProgressBar:
    """One file's bar: the upload as it goes, then percent done, realtime factor, chunks, ETA."""

    def __init__(
        self,
        name: str,
        *,
        position: int = 0,
        enabled: bool | None = None,
        file: IO[str] | None = None,
    ) -> None:
        self._bar = _Bar(
            total=100,
            desc=name,
            position=position,
            bar_format=BAR_FORMAT,
            disable=not enabled if enabled is not None else None,
            leave=True,
            dynamic_ncols=True,
            file=file or sys.stderr,
        )
        self._uploading = False
        self._drawn_at = 0.0

    @property
    def enabled(self) -> bool:
        return not self._bar.disable

    def uploading(self, sent: int, total: int) -> None:
        """Draw the upload: the share of the file's body sent, and megabytes sent of all."""
        if self._bar.disable:
            return
        moment = time.monotonic()
        if sent < total and moment - self._drawn_at < REDRAW_SECONDS:
            return
        self._drawn_at = moment
        self._uploading = True
        self._bar.n = round(100 * sent / total, 1) if total else 100.0
        self._bar.set_postfix_str(f"uploading {sent / MB:.1f}/{total / MB:.1f} MB", refresh=False)
        self._bar.refresh()

    def show(
        self,
        *,
        fraction: float,
        realtime_factor: float | None,
        chunks: int,
        chunks_total: int | None,
    ) -> None:
        """Draw the bar at fraction (0..1) with its figures."""
        if self._uploading:  # processing starts from 0, with an ETA of its own
            self._uploading = False
            self._bar.set_postfix_str("", refresh=False)
            self._bar.reset(total=100)
        figures = []
        if realtime_factor:
            figures.append(f"{realtime_factor:.1f}x realtime")
        figures.append(f"{chunks}/{chunks_total if chunks_total else '?'} chunks")
        self._bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
        self._bar.set_postfix_str(", ".join(figures), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
