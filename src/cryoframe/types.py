"""Type aliases for the public API's string options (``typing.Literal``): one definition each,
shared by :mod:`cryoframe.api` and the CLI's ``choices``.  Imports nothing from cryoframe."""

from __future__ import annotations

import os
from typing import Literal, get_args

__all__ = [
    "ClassAgg",
    "Class2DAlgorithm",
    "Class2DInit",
    "Class2DScale",
    "CtfMode",
    "Device",
    "ExportFormat",
    "OnMissing",
    "PathLike",
    "SubsetMode",
    "SynthKind",
    "choices",
]

PathLike = str | os.PathLike[str]
Device = Literal["cpu", "gpu", "auto"]
"""Where array work runs: NumPy, CuPy (error without a GPU), or CuPy when available else NumPy."""
ExportFormat = Literal["cs", "star"]
SubsetMode = Literal["gmm", "thresholds"]
ClassAgg = Literal["sum", "max"]
OnMissing = Literal["error", "drop", "separate"]
Class2DAlgorithm = Literal["em", "vdam"]
Class2DInit = Literal["random", "msa"]
Class2DScale = Literal["none", "particle", "sample"]
"""Per-particle contrast scale in 2D classification (see ``Class2D.scale_mode``)."""
CtfMode = Literal["full", "flip"]
SynthKind = Literal["2d", "3d"]


def choices(alias: object) -> list[str]:
    """The values of a ``Literal`` alias, for ``argparse`` ``choices=``."""
    return [str(v) for v in get_args(alias)]
