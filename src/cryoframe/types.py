"""Type aliases for the public API's string options (``typing.Literal``): one definition each,
shared by :mod:`cryoframe.api` and the CLI's ``choices``; and the one check of a random seed.  Imports
only :mod:`cryoframe.errors` from cryoframe."""

from __future__ import annotations

import numbers
import os
from typing import Literal, get_args

from cryoframe.errors import InputError

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
    "SEED_MAX",
    "SynthKind",
    "check_seed",
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


SEED_MAX = 2**32 - 1
"""The largest seed NumPy's ``SeedSequence``/``RandomState`` and scikit-learn take (the smallest is 0)."""


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as a Python int if it is an integer in 0 .. :data:`SEED_MAX`, else
    :class:`~cryoframe.errors.InputError` naming ``name`` (a negative seed was a NumPy ``ValueError``
    from deep inside a job; a NumPy integer could not be written to a store's JSON parameters)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= SEED_MAX:
        raise InputError(f"{name} must be an integer in 0 .. {SEED_MAX} (got {seed!r})")
    return int(seed)
