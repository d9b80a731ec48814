"""Checkpoints of 3D classification: the whole state after an iteration, written atomically.

A checkpoint is ``state.npz`` (arrays) plus ``state.json`` (iteration, phase, history, parameters)
in one directory; both are replaced by rename, so an interrupted write leaves the previous one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(directory: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``arrays`` and the JSON-able ``meta`` into ``directory`` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".state.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items() if v is not None})  # type: ignore[arg-type]  # stub misreads **arrays
    tmpj = d / ".state.json.tmp"
    tmpj.write_text(json.dumps(meta, default=float))
    os.replace(tmp, d / "state.npz")
    os.replace(tmpj, d / "state.json")


def load_checkpoint(directory: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` of :func:`save_checkpoint`; FileNotFoundError when there is none."""
    d = Path(directory)
    if not (d / "state.npz").is_file() or not (d / "state.json").is_file():
        raise FileNotFoundError(f"{d}: no 3D classification checkpoint")
    with np.load(d / "state.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((d / "state.json").read_text())
