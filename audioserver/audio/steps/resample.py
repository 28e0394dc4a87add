"""resample: sample-rate conversion by a polyphase FIR, exact across chunks.

The filter is a Kaiser-windowed sinc (about 120 dB stop-band attenuation,
pass band flat to 0.9 of the lower Nyquist frequency) run by
``scipy.signal.resample_poly``. It is a finite, centred filter, so a chunk
given ``context`` frames of audio on each side produces exactly the samples
whole-file resampling would: chunks start at multiples of ``down`` input
frames, where input and output frames line up.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import numpy as np
from scipy import signal

from .base import Block, Param, Step

ATTENUATION_DB = 120.0
TRANSITION = 0.1  # transition band, as a fraction of the lower Nyquist frequency


@functools.lru_cache(maxsize=16)
def lowpass_fir(up: int, down: int) -> np.ndarray:
    """Return the anti-aliasing FIR for resampling by up/down (unit gain at DC, read-only)."""
    widest = max(up, down)
    beta = signal.kaiser_beta(ATTENUATION_DB)
    # Kaiser's estimate of the length this attenuation and transition width need.
    numtaps = signal.kaiserord(ATTENUATION_DB, TRANSITION / widest)[0] | 1
    fir = signal.firwin(numtaps, (1.0 - TRANSITION / 2) / widest, window=("kaiser", beta))
    fir.setflags(write=False)
    return fir


class Resample(Step):
    name = "resample"
    cost_ns = 500.0  # per output sample, when it has more samples than the input
    description = "Converts to another sample rate (polyphase Kaiser FIR, about 120 dB rejection)."
    kind = "stateful"
    params = (Param(name="rate", type=int, min=8000, max=192000, unit="Hz",
                    description="sample rate of the output"),)  # fmt: skip
    example = "resample=rate=48000"

    def bind(self, sample_rate: int, channels: int) -> None:
        super().bind(sample_rate, channels)
        rate = int(self.options["rate"])  # an int parameter: already an int
        common = math.gcd(sample_rate, rate)
        self.up, self.down = rate // common, sample_rate // common
        if self.up == self.down:
            self.fir, self.context = None, 0
            return
        self.fir = lowpass_fir(self.up, self.down)
        # Input frames the centred filter reaches on each side of an output frame.
        self.context = math.ceil((len(self.fir) // 2) / self.up) + 1

    def cost(self, sample_rate: int) -> float:
        return self.cost_ns * max(1.0, self.output_rate(sample_rate) / sample_rate)

    def output_rate(self, sample_rate: int) -> int:
        return int(self.options["rate"])

    def pre_roll(self) -> int:
        return self.context

    def post_roll(self) -> int:
        return self.context

    def alignment(self) -> int:
        return self.down

    def process(self, block: Block) -> Block:
        if self.fir is None:
            return block
        up, down = self.up, self.down
        if block.start % down:
            raise ValueError(
                f"resample: a block starts at frame {block.start}, not at a multiple of {down}"
            )
        # scipy takes the FIR itself as the window (its docs); its stubs do not say so.
        resampled = signal.resample_poly(  # type: ignore[call-overload]
            block.samples, up, down, axis=0, window=self.fir
        )
        # Block starts and chunk boundaries are multiples of down: they map exactly.
        start, pre = block.start * up // down, block.pre * up // down
        body_end = block.body_start + len(block.body)
        # The last chunk keeps the partial frame that whole-file resampling ends with.
        end = -(-body_end * up // down) if block.final else body_end * up // down
        return replace(
            block, samples=resampled, sample_rate=int(self.options["rate"]),
            start=start, pre=pre, post=len(resampled) - (end - start),
        )  # fmt: skip
