"""Writing results: a 16-bit PCM WAV file written chunk by chunk."""

from __future__ import annotations

import os
import struct
from pathlib import Path

HEADER_BYTES = 44
_MAX_RIFF_SIZE = 0xFFFFFFFF


def wav_header(*, sample_rate: int, channels: int, data_bytes: int) -> bytes:
    """Return the 44-byte header of a 16-bit PCM WAV file with data_bytes of samples."""
    block_align = channels * 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", min(36 + data_bytes, _MAX_RIFF_SIZE), b"WAVE",
        b"fmt ", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16,
        b"data", min(data_bytes, _MAX_RIFF_SIZE),
    )  # fmt: skip


class WavWriter:
    """A 16-bit PCM WAV file that grows chunk by chunk; readable while written."""

    def __init__(
        self, path: Path, *, sample_rate: int, channels: int, existing: bool = False
    ) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.channels = channels
        if existing:  # a finished file, opened again (after a restart) to be read
            self._fd = os.open(self.path, os.O_RDWR)
            self.data_bytes = os.fstat(self._fd).st_size - HEADER_BYTES
            return
        self.data_bytes = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(self._fd, self._header())

    def _header(self) -> bytes:
        return wav_header(
            sample_rate=self.sample_rate, channels=self.channels, data_bytes=self.data_bytes
        )

    def append(self, pcm: bytes) -> int:
        """Append interleaved PCM; return its byte offset in the data."""
        offset = self.data_bytes
        os.pwrite(self._fd, pcm, HEADER_BYTES + offset)
        self.data_bytes += len(pcm)
        return offset

    def read(self, offset: int, length: int) -> bytes:
        """Return length bytes of PCM from offset in the data."""
        return os.pread(self._fd, length, HEADER_BYTES + offset)

    def truncate(self, data_bytes: int) -> None:
        """Keep only the first data_bytes of PCM (after a crash), and say so in the header."""
        os.ftruncate(self._fd, HEADER_BYTES + data_bytes)
        self.data_bytes = data_bytes
        self.finalize()

    def finalize(self) -> None:
        """Write the real sizes into the header: the file is then a complete WAV."""
        os.pwrite(self._fd, self._header(), 0)

    def close(self) -> None:
        os.close(self._fd)
