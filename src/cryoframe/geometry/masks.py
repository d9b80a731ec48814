"""Masks of maps: threshold -> binary, extend, raised-cosine soft edge (``relion_mask_create``
``--ini_threshold --extend_inimask --width_soft_edge``) and soft spheres.

Distances are Euclidean in voxels between voxel centres, as RELION's ``autoMask``: a voxel joins
the extended mask when a mask voxel lies at distance ``< extend`` (``extend < 0`` shrinks: a mask
voxel leaves when a background voxel lies at distance ``< -extend``), and a background voxel at
distance ``d < soft_edge`` from the extended mask gets ``0.5 + 0.5 cos(pi d / soft_edge)``.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["soft_mask_outside", "soft_sphere", "threshold_mask"]


def threshold_mask(vol: np.ndarray, threshold: float, extend_px: float = 0.0, soft_edge_px: float = 0.0) -> np.ndarray:
    """Mask (float32, same shape as ``vol``) of voxels ``>= threshold``, extended by ``extend_px`` and
    given a raised-cosine edge of ``soft_edge_px`` voxels."""
    from scipy import ndimage  # lazy: scipy.ndimage costs about 0.24 s of every 3D job's start-up

    binary = np.asarray(vol) >= threshold
    if extend_px > 0 and binary.any():
        binary = ndimage.distance_transform_edt(~binary) < extend_px
    elif extend_px < 0 and not binary.all():
        binary = ~(ndimage.distance_transform_edt(binary) < -extend_px)
    out = binary.astype(np.float32)
    if soft_edge_px > 0 and binary.any():
        d = ndimage.distance_transform_edt(~binary)
        edge = (~binary) & (d < soft_edge_px)
        out[edge] = (0.5 + 0.5 * np.cos(np.pi * d[edge] / soft_edge_px)).astype(np.float32)
    return out


def soft_sphere(box: int, radius_px: float, soft_edge_px: float = 0.0) -> np.ndarray:
    """(box, box, box) float32 sphere about voxel ``box // 2``: 1 within ``radius_px``, a raised-cosine
    fall to 0 over ``soft_edge_px`` (RELION ``raisedCosineMask``)."""
    g = np.arange(box) - box // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    out = (r <= radius_px).astype(np.float64)
    if soft_edge_px > 0:
        edge = (r > radius_px) & (r < radius_px + soft_edge_px)
        out[edge] = 0.5 + 0.5 * np.cos(np.pi * (r[edge] - radius_px) / soft_edge_px)
    return out.astype(np.float32)


@lru_cache(maxsize=8)
def _outside_weight(box: int, radius: float, width: float) -> np.ndarray:
    g = np.arange(box) - box // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    w = np.where(r < radius, 0.0, np.where(r > radius + width, 1.0,
                                           0.5 + 0.5 * np.cos(np.pi * (radius + width - r) / width)))
    w.flags.writeable = False
    return w


def soft_mask_outside(vol: Any, radius_px: float | None = None, width_px: float = 3.0, xp: ModuleType = np) -> Any:
    """Replace a cubic map outside a sphere by its background (RELION ``softMaskOutsideMap``).

    Voxels beyond ``radius_px + width_px`` (default radius ``box / 2``) become the average
    background value (the raised-cosine-weighted mean outside ``radius_px``); between the two radii
    the map blends into it with a raised cosine.  Removes the noise in the corners of a
    reconstruction, as RELION does to every map it reconstructs.
    """
    box = vol.shape[0]
    w = _outside_weight(box, float(box / 2 if radius_px is None else radius_px), float(width_px))
    if not w.any():
        return vol
    wx = xp.asarray(w)
    bg = (wx * vol).sum() / wx.sum()
    return ((1.0 - wx) * vol + wx * bg).astype(vol.dtype)
