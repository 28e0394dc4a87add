"""The processing steps. Importing this package registers every step in ``Step.registry``."""

from . import channels, dynamics, fades, filters, gain, loudness, normalize, resample  # noqa: F401
from .base import Block, GlobalStep, Param, Step

# The order of the catalogue (GET /pipeline/steps, the README, the page).
_ORDER = ("gain", "normalize", "loudness", "highpass", "lowpass", "bandpass",
          "fade_in", "fade_out", "resample", "mono", "compressor")  # fmt: skip


def catalogue() -> list[type[Step]]:
    """Return every registered step, in catalogue order (steps defined elsewhere last)."""
    return sorted(
        Step.registry.values(),
        key=lambda step: _ORDER.index(step.name) if step.name in _ORDER else len(_ORDER),
    )


__all__ = ["Block", "GlobalStep", "Param", "Step", "catalogue"]
