"""The step interface: what a processing step declares, and how it processes a block.

A step is a small class: its ``name``, a one-line ``description``, its
``params`` and a ``process`` method. Defining the class registers it; the
pipeline parser, the validation, the ``GET /pipeline/steps`` catalogue and
the README table all read the same declaration.

Steps see audio as a ``Block``: float64 samples of shape (frames, channels)
and where they sit in the stream. In the server the samples come from the
chunk's pydub segment, converted once per chunk (``Chunk.block``); the
steps hand the array on to each other, never back to a segment.

A block may start with ``pre`` frames of
pre-roll: audio from before the chunk that stateful steps (filters) run
through so that their state at the chunk's first frame equals the state they
would have when processing the whole file. It may end with ``post`` frames
of look-ahead, for steps that need the future (a resampler's filter is
centred). The pipeline drops both afterwards.

A ``GlobalStep`` depends on the whole signal as it reaches it (a peak, a
loudness): the pipeline ``measure``-s every chunk, ``reduce``-s the
measurements to one value, then ``process``-es the chunks with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ...exceptions import ParameterError


@dataclass(frozen=True)
class Block:
    """Audio moving through the steps, and where it sits in the stream."""

    samples: np.ndarray  # float64, shape (frames, channels)
    sample_rate: int
    start: int  # index, in the stream at this rate, of samples[0]
    pre: int = 0  # leading frames that are pre-roll, not part of the chunk
    post: int = 0  # trailing frames that are look-ahead, not part of the chunk
    final: bool = False  # the chunk ends where the stream ends

    @property
    def body(self) -> np.ndarray:
        """The chunk's own frames, without pre-roll and look-ahead."""
        return self.samples[self.pre : len(self.samples) - self.post]

    @property
    def body_start(self) -> int:
        """Index in the stream of the chunk's first frame."""
        return self.start + self.pre

    def trimmed(self, *, keep_pre: int = 0) -> Block:
        """Return the chunk's own frames, keeping at most keep_pre frames of pre-roll."""
        pre = min(self.pre, keep_pre)
        samples = self.samples[self.pre - pre : len(self.samples) - self.post]
        return Block(samples, self.sample_rate, self.body_start - pre, pre, 0, self.final)

    @property
    def channels(self) -> int:
        channels: int = self.samples.shape[1]
        return channels

    def with_samples(self, samples: np.ndarray) -> Block:
        """Return the same block holding other samples of the same length and rate."""
        return replace(self, samples=samples)


@dataclass(frozen=True, kw_only=True)
class Param:
    """One parameter of a step: its type, default and allowed range."""

    name: str
    type: type = float  # float or int
    default: float | None = None  # None: the parameter is required
    min: float
    max: float
    max_rate_fraction: float | None = None  # upper bound as a fraction of the sample rate
    unit: str = ""
    description: str = ""

    def coerce(self, step: str, value: Any) -> float | int:
        """Return value as this parameter's type, or raise ParameterError naming step and param."""
        number = self._as_number(step, value)
        if not math.isfinite(number):
            raise self.error(step, f"must be a finite number, got {value!r}")
        if self.type is int:
            if number != int(number):
                raise self.error(step, f"must be a whole number, got {value!r}")
            number = int(number)
        if not self.min <= number <= self.max:
            raise self.error(
                step, f"must be between {self.min:g} and {self.max:g}{self._unit()}, got {value!r}"
            )
        return number

    def _as_number(self, step: str, value: Any) -> float:
        if isinstance(value, bool):
            raise self.error(step, f"must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise self.error(step, f"must be a number, got {value!r}")

    def check_rate(self, step: str, value: float, sample_rate: int) -> None:
        """Raise ParameterError if value is too high for the sample rate it will run at."""
        if self.max_rate_fraction is None:
            return
        limit = self.max_rate_fraction * sample_rate
        if value > limit:
            raise self.error(
                step,
                f"must be at most {self.max_rate_fraction:g} x the sample rate "
                f"({limit:g}{self._unit()} at {sample_rate} Hz), got {value:g}",
            )

    def error(self, step: str, problem: str) -> ParameterError:
        return ParameterError(
            f"Step '{step}': parameter '{self.name}' {problem}.",
            code="invalid_pipeline",
            step=step,
            parameter=self.name,
        )

    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""

    def catalogue(self) -> dict[str, Any]:
        """Return this parameter as shown by GET /pipeline/steps."""
        entry: dict[str, Any] = {
            "name": self.name,
            "type": "integer" if self.type is int else "number",
            "default": self.default,
            "required": self.default is None,
            "min": self.min,
            "max": self.max,
            "unit": self.unit,
            "description": self.description,
        }
        if self.max_rate_fraction is not None:
            entry["max_rate_fraction"] = self.max_rate_fraction
        return entry


class Step:
    """A processing step. Subclasses declare name, description, kind and params, and process blocks.

    ``process`` must not change the step: the pool runs it on many chunks at
    once. Values that depend on the sample rate are prepared in ``bind``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[str] = "per sample"  # per sample, stateful, global, position-dependent
    params: ClassVar[tuple[Param, ...]] = ()
    example: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Step]]] = {}
    # CPU nanoseconds per input sample (frame x channel), measured on the machine this
    # project is built on: what the server's cost estimate of a pipeline adds up.
    cost_ns: ClassVar[float] = 30.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Step.registry[cls.name] = cls

    def __init__(self, **options: Any) -> None:
        known = {param.name: param for param in self.params}
        for name in options:
            if name not in known:
                allowed = ", ".join(known) or "none"
                raise ParameterError(
                    f"Step '{self.name}': unknown parameter '{name}' (parameters: {allowed}).",
                    code="invalid_pipeline",
                    step=self.name,
                    parameter=name,
                )
        self.options: dict[str, float | int] = {}
        for param in self.params:
            if param.name in options:
                value = param.coerce(self.name, options[param.name])
            elif param.default is None:
                raise param.error(self.name, "is required")
            else:
                value = param.default
            self.options[param.name] = value
        self.sample_rate: int | None = None
        self.check()

    def check(self) -> None:
        """Check relations between parameters (raise ParameterError); none by default."""

    def bind(self, sample_rate: int, channels: int) -> None:
        """Prepare to run at this sample rate and channel count (ParameterError if it cannot)."""
        for param in self.params:
            param.check_rate(self.name, self.options[param.name], sample_rate)
        self.sample_rate = sample_rate

    def pre_roll(self) -> int:
        """Frames of earlier audio each chunk needs so its output equals whole-file processing."""
        return 0

    def post_roll(self) -> int:
        """Frames of later audio (look-ahead) each chunk needs; 0 for causal steps."""
        return 0

    def alignment(self) -> int:
        """Chunks must start at a multiple of this many input frames (a resampler's phase)."""
        return 1

    def cost(self, sample_rate: int) -> float:
        """Estimated CPU nanoseconds per input sample at this input rate (for the budget)."""
        return self.cost_ns

    def output_rate(self, sample_rate: int) -> int:
        """The sample rate of this step's output."""
        return sample_rate

    def output_channels(self, channels: int) -> int:
        """The channel count of this step's output."""
        return channels

    def process(self, block: Block) -> Block:
        """Return the processed block."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """Return the step in the pipeline's JSON form, every parameter included."""
        return {"step": self.name, **self.options}

    def __repr__(self) -> str:
        options = ":".join(f"{name}={value:g}" for name, value in self.options.items())
        return f"{self.name}={options}" if options else self.name

    @classmethod
    def catalogue(cls) -> dict[str, Any]:
        """Return this step as shown by GET /pipeline/steps."""
        return {
            "name": cls.name,
            "description": cls.description,
            "kind": cls.kind,
            "parameters": [param.catalogue() for param in cls.params],
            "example": cls.example or cls.name,
        }


class GlobalStep(Step):
    """A step whose effect depends on the whole signal that reaches it."""

    kind: ClassVar[str] = "global"

    def measure_pre_roll(self) -> int:
        """Frames of pre-roll measure() needs (a weighting filter); 0 by default."""
        return 0

    def measure(self, block: Block) -> Any:
        """Return this chunk's share of the measurement (of block.body; pre-roll before it)."""
        raise NotImplementedError

    def reduce(self, measurements: Sequence[Any]) -> None:
        """Fix the value that process applies, from the measurements of every chunk in order."""
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """Return what the reduction found, for the task's log and summary."""
        return {}

    def output_loudness(self) -> np.ndarray | None:
        """Return the mean square of each complete 100 ms sub-block of process()'s output.

        After reduce(), a step whose output is a gain of the signal it measured
        may know its output's loudness without measuring it again (see
        audio/loudness.py); None (the default) when it does not, or when the
        output would clip at full scale, which changes the picture.
        """
        return None


def db_to_gain(db: float) -> float:
    """Return the linear gain of a level in dB."""
    gain: float = 10.0 ** (db / 20.0)
    return gain
