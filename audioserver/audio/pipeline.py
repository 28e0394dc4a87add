"""Pipelines: parsing their two written forms, and planning them as stages.

Written forms (both give the same ``Pipeline``)::

    highpass=freq=80:order=4,loudness=target=-14      ffmpeg filtergraph style
    highpass=80:4,normalize                           positional options, in declared order
    [{"step": "highpass", "freq": 80, "order": 4}, {"step": "normalize"}]

Planning splits the steps into stages at each global step. A stage is a map
over chunks, run in parallel; the global step after it measures every chunk
of the stage's output, reduces the measurements to one value, and opens the
next stage by applying it. Only the last stage's output is emitted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..exceptions import ParameterError
from .steps import Block, GlobalStep, Step

MAX_STEPS = 32
DEFAULT_PIPELINE = "normalize"
SHOWN_CHARACTERS = 40  # of a value quoted back in an error message


def _pipeline_error(message: str, **extra: Any) -> ParameterError:
    return ParameterError(message, code="invalid_pipeline", **extra)


def _parse_text(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``name=key=value:key=value,name2`` into (name, options) pairs."""
    if ";" in text or "[" in text:
        raise _pipeline_error(
            "The pipeline text has ';' or '[': it is one chain of steps separated by ','. "
            "Example: highpass=freq=80,normalize."
        )
    entries = []
    for position, part in enumerate(text.split(","), start=1):
        name, _, option_text = part.strip().partition("=")
        name = name.strip()
        if not name:
            raise _pipeline_error(
                f"Step {position} of the pipeline is empty (two commas in a row, or a comma at "
                "the start or end). Example: highpass=freq=80,normalize.",
                position=position,
            )
        entries.append((name, _parse_options(name, position, option_text)))
    return entries


def _parse_options(name: str, position: int, text: str) -> dict[str, Any]:
    """Parse ``key=value:key=value`` (or positional ``value:value``) of one step."""
    if not text.strip():
        return {}
    step_class = Step.registry.get(name)
    declared = [param.name for param in step_class.params] if step_class else []
    options: dict[str, Any] = {}
    for index, item in enumerate(text.split(":")):
        if not item.strip():
            raise _pipeline_error(
                f"Step {position} '{name}': an option is empty (a ':' too many). "
                "Write name=value:name=value.",
                step=name,
                position=position,
            )
        key, equals, value = item.partition("=")
        if not equals:
            if index >= len(declared):
                raise _pipeline_error(
                    f"Step {position} '{name}': option {_shown(item.strip())} has no name, and the "
                    f"step takes {len(declared)} positional option(s). Write name=value.",
                    step=name,
                    position=position,
                )
            key, value = declared[index], item
        key = key.strip()
        if not key:
            raise _pipeline_error(
                f"Step {position} '{name}': an option has an empty name. Write name=value.",
                step=name,
                position=position,
            )
        if key in options:
            raise _pipeline_error(
                f"Step {position} '{name}': parameter {_shown(key)} is given twice.",
                step=name,
                parameter=key[:64],
                position=position,
            )
        options[key] = value.strip()
    return options


def _json_int(digits: str) -> int | float:
    # Python refuses to convert integers of more than 4300 digits (a ValueError), and no
    # float holds one of more than 308: such a number is as good as infinite.
    return int(digits) if len(digits) <= 300 else float(digits)


def _parse_json(text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        entries = json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as error:
        raise _pipeline_error(
            f"The pipeline is not valid JSON: {error.msg} at character {error.pos}. "
            'Example: [{"step": "highpass", "freq": 80}].'
        ) from None
    except RecursionError:
        raise _pipeline_error(
            "The pipeline JSON is nested too deeply: it is an array of steps, each an object "
            'of numbers. Example: [{"step": "highpass", "freq": 80}].'
        ) from None
    return _from_json(entries)


def _from_json(entries: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(entries, list):
        raise _pipeline_error("A JSON pipeline must be an array of steps.")
    parsed = []
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), str):
            raise _pipeline_error(
                f'Step {position} of the pipeline must be an object with a "step" name, '
                'like {"step": "gain", "db": -3}.',
                position=position,
            )
        options = {key: value for key, value in entry.items() if key != "step"}
        for key, value in options.items():
            if isinstance(value, list | dict):
                raise _pipeline_error(
                    f"Step {position} '{entry['step'][:64]}': parameter {_shown(key)} must be a "
                    "number, not an array or object.",
                    step=entry["step"][:64],
                    parameter=key[:64],
                    position=position,
                )
        parsed.append((entry["step"], options))
    return parsed


def _shown(text: str) -> str:
    """text quoted for an error message, cut to SHOWN_CHARACTERS."""
    if len(text) <= SHOWN_CHARACTERS:
        return repr(text)
    return f"{text[:SHOWN_CHARACTERS]!r}... ({len(text)} characters)"


# A quoted value in a step's message longer than SHOWN_CHARACTERS (a client may send any).
_LONG_QUOTE = re.compile(rf"'([^']{{{SHOWN_CHARACTERS}}})[^']+'")


def _make_step(position: int, name: str, options: dict[str, Any]) -> Step:
    step_class = Step.registry.get(name)
    if step_class is None:
        known = ", ".join(sorted(Step.registry))
        raise _pipeline_error(
            f"Step {position}: unknown step {name[:64]!r}. Steps: {known}.",
            step=name[:64],
            position=position,
        )
    try:
        return step_class(**options)
    except ParameterError as error:
        message = error.message.replace("Step '", f"Step {position} '", 1)
        error.message = _LONG_QUOTE.sub(r"'\1...'", message)
        error.args = (error.message,)
        error.extra["position"] = position
        if isinstance(error.extra.get("parameter"), str):
            error.extra["parameter"] = error.extra["parameter"][:64]
        raise


@dataclass
class Stage:
    """Steps mapped over chunks in parallel, and the global step that measures their output."""

    steps: list[Step]
    boundary: GlobalStep | None
    input_rate: int
    input_channels: int
    output_rate: int
    output_channels: int
    pre_roll: int  # frames of earlier input each chunk needs (its steps' and its meter's)
    post_roll: int  # frames of later input each chunk needs (look-ahead)
    alignment: int  # chunks start at multiples of this many input frames
    meter_pre_roll: int  # frames of output pre-roll kept for the measurement after the stage

    def chunk_frames(self, seconds: float) -> int:
        """Frames of input per chunk: seconds long, rounded to the stage's alignment."""
        return max(1, round(seconds * self.input_rate / self.alignment)) * self.alignment

    def chunks_per_job(self, chunk_frames: int) -> int:
        """Chunks processed together in one job, so that pre-roll costs at most what they do.

        A job processes its chunks' frames plus the stage's pre-roll and
        look-ahead; with a long pre-roll (a slow compressor release, a steep
        low filter) and short chunks, one job per chunk would process the same
        pre-roll over and over. Jobs of several chunks keep the work per
        second of audio at most twice the chunks' own, however short they are.
        """
        return max(1, -(-(self.pre_roll + self.post_roll) // chunk_frames))

    def step_costs(self, chunk_frames: int) -> list[tuple[Step, float]]:
        """Each step's estimated CPU seconds per second of audio, pre-roll included.

        A step at rate r with c channels sees r * c samples a second, times the
        stage's overhead: a job processes its chunks plus pre-roll and
        look-ahead. The global step after the stage measures its output.
        """
        job = chunk_frames * self.chunks_per_job(chunk_frames)
        overhead = (job + self.pre_roll + self.post_roll) / job
        rate, channels = self.input_rate, self.input_channels
        costs = []
        for step in self.steps:
            costs.append((step, step.cost(rate) * rate * channels * overhead * 1e-9))
            rate, channels = step.output_rate(rate), step.output_channels(channels)
        if self.boundary is not None:
            costs.append((self.boundary, self.boundary.cost(rate) * rate * channels * 1e-9))
        return costs

    def known_loudness(self) -> np.ndarray | None:
        """Return the sub-block mean squares of this stage's output, if already known.

        A stage that is only the global step before it (a loudness gain, say)
        outputs a gain of the signal that step measured: once that step has
        reduced its measurements, the output's loudness follows from them
        (GlobalStep.output_loudness), and its meter need not measure it again.
        """
        if len(self.steps) == 1 and isinstance(self.steps[0], GlobalStep):
            return self.steps[0].output_loudness()
        return None

    def run(self, block: Block) -> Block:
        """Process one chunk; return its output with only the pre-roll the meter needs."""
        for step in self.steps:
            block = step.process(block)
        return block.trimmed(keep_pre=self.meter_pre_roll)


class Pipeline:
    """An ordered list of steps, callable on a whole signal, and plannable as stages."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    @classmethod
    def parse(cls, spec: str | list[Any] | None) -> Pipeline:
        """Parse either written form; None gives the default pipeline, "" no steps."""
        if spec is None:
            spec = DEFAULT_PIPELINE
        if isinstance(spec, str):
            text = spec.strip()
            if not text:
                entries = []
            elif text.startswith(("[", "{")):
                entries = _parse_json(text)
            else:
                entries = _parse_text(text)
        else:
            entries = _from_json(spec)
        if len(entries) > MAX_STEPS:
            raise _pipeline_error(
                f"The pipeline has {len(entries)} steps; at most {MAX_STEPS} are allowed."
            )
        return cls([_make_step(position, *entry) for position, entry in enumerate(entries, 1)])

    def _locate(self, error: ParameterError) -> None:
        """Add the position of the step an error names (the first one not yet placed)."""
        if "position" in error.extra or "step" not in error.extra:
            return
        positions = [
            position
            for position, step in enumerate(self.steps, start=1)
            if step.name == error.extra["step"] and step.sample_rate is None
        ]
        if not positions:
            return
        position = positions[0]
        error.extra["position"] = position
        error.message = error.message.replace("Step '", f"Step {position} '", 1)
        error.args = (error.message,)

    def to_json(self) -> list[dict[str, Any]]:
        """Return the normalised JSON form: every step with every parameter."""
        return [step.to_json() for step in self.steps]

    def __str__(self) -> str:
        return ",".join(repr(step) for step in self.steps)

    def plan(
        self,
        sample_rate: int,
        channels: int,
        *,
        output_pre_roll: Callable[[int], int] = lambda rate: 0,
    ) -> list[Stage]:
        """Bind every step to the rate and channels it will see, and split the steps into stages.

        output_pre_roll(rate) is the pre-roll the output's own meter needs.
        """
        for step in self.steps:
            step.sample_rate = None  # set again by each step's bind: the first unset one failed
        groups: list[tuple[list[Step], GlobalStep | None]] = []
        current: list[Step] = []
        for step in self.steps:
            if isinstance(step, GlobalStep):
                groups.append((current, step))
                current = [step]
            else:
                current.append(step)
        groups.append((current, None))
        stages = []
        for steps, boundary in groups:
            try:
                stage = _bind_stage(steps, boundary, sample_rate, channels, output_pre_roll)
            except ParameterError as error:
                self._locate(error)
                raise
            sample_rate, channels = stage.output_rate, stage.output_channels
            stages.append(stage)
        return stages

    def __call__(self, samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
        """Process a whole signal in one piece: the reference chunked processing must equal."""
        samples = np.asarray(samples, dtype=np.float64)
        if samples.ndim == 1:
            samples = samples[:, np.newaxis]
        block = Block(samples, sample_rate, 0, final=True)
        for stage in self.plan(sample_rate, samples.shape[1]):
            block = stage.run(block)
            if stage.boundary is not None:
                stage.boundary.reduce([stage.boundary.measure(block)])
            block = block.trimmed()
        return block.samples, block.sample_rate


def _bind_stage(
    steps: list[Step],
    boundary: GlobalStep | None,
    sample_rate: int,
    channels: int,
    output_pre_roll: Callable[[int], int],
) -> Stage:
    input_rate, input_channels = sample_rate, channels
    rates = []
    for step in steps:
        step.bind(sample_rate, channels)
        rates.append((sample_rate, step.output_rate(sample_rate)))
        sample_rate, channels = step.output_rate(sample_rate), step.output_channels(channels)
    if boundary is not None:
        boundary.bind(sample_rate, channels)
        meter_pre_roll = boundary.measure_pre_roll()
    else:
        meter_pre_roll = output_pre_roll(sample_rate)
    alignment = _alignment(steps, rates, input_rate)
    # Walk back from the output: each step needs its own margin plus, scaled to its
    # input rate, what the steps after it need.
    pre_roll, post_roll = meter_pre_roll, 0
    for step, (rate_in, rate_out) in zip(reversed(steps), reversed(rates), strict=True):
        pre_roll = step.pre_roll() + math.ceil(pre_roll * rate_in / rate_out)
        post_roll = step.post_roll() + math.ceil(post_roll * rate_in / rate_out)
    pre_roll = -(-pre_roll // alignment) * alignment  # the pre-roll's start is aligned too
    return Stage(
        steps, boundary, input_rate, input_channels, sample_rate, channels,
        pre_roll, post_roll, alignment, meter_pre_roll,
    )  # fmt: skip


def _alignment(steps: list[Step], rates: list[tuple[int, int]], input_rate: int) -> int:
    """Smallest step in stage-input frames that lands every step on a frame it can start at."""
    alignment = 1
    for step, (rate_in, _) in zip(steps, rates, strict=True):
        # A chunk boundary at input frame a is frame a * rate_in / input_rate at this
        # step, which must be a multiple of the step's own alignment.
        needed = Fraction(step.alignment() * input_rate, rate_in)
        alignment = math.lcm(alignment, needed.numerator)
    return alignment
