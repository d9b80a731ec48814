"""Mask job (as ``relion_mask_create``): a map -> a soft mask MRC with the map's voxel size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cryoframe.errors import InputError
from cryoframe.geometry.masks import soft_sphere, threshold_mask
from cryoframe.jobs._volumes import read_map, write_map
from cryoframe.storage.atomic import check_output

__all__ = ["mask"]


def mask(map_path: str | os.PathLike[str] | None, out: str | os.PathLike[str], *, threshold: float | None = None,
         extend_px: float = 0.0, soft_edge_px: float = 0.0, radius_px: float | None = None, box: int | None = None,
         psize_A: float | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a mask MRC to ``out``: ``threshold`` a map (then extend by ``extend_px`` and add a
    raised-cosine edge of ``soft_edge_px`` px), or a soft sphere of ``radius_px`` (box and pixel size
    of ``map_path``, or ``box``/``psize_A``).  Returns a summary (voxels inside, volume fraction)."""
    final = check_output(out, overwrite)
    if (threshold is None) == (radius_px is None):
        raise InputError("give either --threshold (mask from a map) or --radius (soft sphere)")
    if soft_edge_px < 0:
        raise InputError(f"--soft-edge must be >= 0 px (got {soft_edge_px})")
    vol, vs = (None, 0.0) if map_path is None else read_map(map_path)
    psize = float(psize_A or vs or 0.0)
    if not psize > 0:
        raise InputError("unknown pixel size: the map header has none; pass --psize")
    if threshold is not None:
        if vol is None:
            raise InputError("--threshold needs a map")
        if not vol.min() <= threshold <= vol.max() or threshold == vol.min():
            raise InputError(f"--threshold {threshold} selects no voxels or all of them (map range "
                             f"{vol.min():.4g} .. {vol.max():.4g})")
        m = threshold_mask(vol, threshold, extend_px, soft_edge_px)
    else:
        b = vol.shape[0] if vol is not None else box
        if not b:
            raise InputError("--radius needs a map or --box")
        if not 0 < radius_px < b:  # type: ignore[operator]
            raise InputError(f"--radius {radius_px} px must be > 0 and smaller than the box ({b} px)")
        m = soft_sphere(int(b), float(radius_px), soft_edge_px)  # type: ignore[arg-type]
    write_map(final, m, psize)
    return {"out": str(Path(final)), "box_px": m.shape[0], "psize_A": psize, "voxels_inside": int(np.sum(m >= 0.5)),
            "fraction": float(m.mean())}
