"""Finding the ffmpeg binary, and pointing pydub at it."""

from __future__ import annotations

import functools
import logging
import shutil

logger = logging.getLogger(__name__)


@functools.cache
def find_ffmpeg(configured: str = "") -> str:
    """Return the ffmpeg to run: the configured one, else ffmpeg on PATH, else imageio-ffmpeg's."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise FileNotFoundError(f"the configured ffmpeg {configured!r} was not found")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    bundled: str = imageio_ffmpeg.get_ffmpeg_exe()
    return bundled


def configure_pydub(ffmpeg: str) -> None:
    """Make pydub use the same ffmpeg as the server (for from_file and export)."""
    from .pcm import AudioSegment  # imports pydub without its warnings

    AudioSegment.converter = ffmpeg
    AudioSegment.ffmpeg = ffmpeg
    logger.debug("pydub uses %s", ffmpeg)
