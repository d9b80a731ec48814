"""Array-module selection: the ONLY place in cryoframe that imports cupy.

``get_array_module("cpu"|"gpu"|"auto")`` returns numpy or cupy; ``to_device``/``to_host`` move
arrays.  Without a GPU or without the ``[gpu]`` extra, ``"auto"`` falls back to numpy and
``"gpu"`` raises a clear error.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from cryoframe.errors import CryoframeError

__all__ = ["get_array_module", "gpu_available", "to_device", "to_host"]


def _cupy() -> ModuleType | None:
    try:
        cp = importlib.import_module("cupy")
        if cp.cuda.runtime.getDeviceCount() < 1:
            return None
        return cp
    except Exception:  # ImportError, CUDA driver errors
        return None


def gpu_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    return _cupy() is not None


def get_array_module(device: str = "cpu") -> ModuleType:
    """Return the array module for ``device`` ('cpu', 'gpu' or 'auto')."""
    if device == "cpu":
        return np
    if device not in ("gpu", "auto"):
        raise CryoframeError(f"unknown device {device!r}: expected cpu, gpu or auto")
    cp = _cupy()
    if cp is None:
        if device == "auto":
            return np
        raise CryoframeError(
            "device 'gpu' needs a CUDA GPU and the [gpu] extra (pip install 'cryoframe[gpu]')"
        )
    return cp


def to_device(x: Any, xp: ModuleType) -> Any:
    """Move ``x`` to the array module ``xp`` (no copy when it is already there)."""
    if xp is np:
        return to_host(x)
    return xp.asarray(x)


def to_host(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array (copies from the GPU when needed)."""
    if hasattr(x, "get") and not isinstance(x, np.ndarray):
        return x.get()
    return np.asarray(x)
