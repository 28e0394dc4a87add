"""Progress bars (tqdm) and printing lines that do not tear them."""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| ETA {remaining}{postfix}"


class _Bar(tqdm):
    monitor_interval = 0  # no monitor thread: every bar is refreshed by its own job


def say(text: str, *, file: IO[str] | None = None) -> None:
    """Print a line above the progress bars (stdout unless told)."""
    tqdm.write(text, file=file or sys.stdout)


def notice(text: str) -> None:
    """Print a line about the client's own doings (reconnects, retries) to stderr."""
    say(f"audio-client: {text}", file=sys.stderr)


class ProgressBar:
    """One file's bar: percent done, realtime factor, chunks received and ETA."""

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

    @property
    def enabled(self) -> bool:
        return not self._bar.disable

    def show(
        self,
        *,
        fraction: float,
        realtime_factor: float | None,
        chunks: int,
        chunks_total: int | None,
    ) -> None:
        """Draw the bar at fraction (0..1) with its figures."""
        figures = []
        if realtime_factor:
            figures.append(f"{realtime_factor:.1f}x realtime")
        figures.append(f"{chunks}/{chunks_total if chunks_total else '?'} chunks")
        self._bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
        self._bar.set_postfix_str(", ".join(figures), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
