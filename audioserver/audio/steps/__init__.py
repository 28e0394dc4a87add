"""The processing steps. Importing this package registers every step in ``Step.registry``."""

# Imported in catalogue order, to register the steps.
from . import gain, normalize, filters  # noqa: F401  # isort: skip
from .base import Block, GlobalStep, Param, Step

__all__ = ["Block", "GlobalStep", "Param", "Step"]
