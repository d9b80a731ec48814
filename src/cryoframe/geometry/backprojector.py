"""From Fourier sums to a map: Hermitian completion, regularised (Wiener-style) division, inverse
transform on the padded grid, windowing to the box and gridding correction.

The sums are those of :func:`cryoframe.geometry.fourier.insert_slices` on the padded half grid:
``data = sum w CTF F`` and ``weight = sum w CTF^2``.  The estimate of the transform is

    F = data / (weight + reg(shell))

with ``reg`` per resolution shell:

* ``None`` (no regulariser): RELION's ``relion_reconstruct`` default, ``weight`` is floored at
  1/1000 of its shell average (so empty voxels do not divide by zero);
* an array from :func:`fsc_regulariser`: RELION's MAP term ``1 / (T tau^2)``, with
  ``tau^2 = SNR / <weight>_shell`` estimated from the FSC of the half maps
  (``SNR = FSC / (1 - FSC)``; RELION ``BackProjector::updateSSNRarrays``);
* a constant (float): the same value in every shell (in units of ``weight``).
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from cryoframe.backend import to_host
from cryoframe.geometry.fourier import gridding_correction
from cryoframe.geometry.fsc import shell_index
from cryoframe.geometry.masks import soft_mask_outside

__all__ = ["fsc_regulariser", "map_from_sums", "shell_mean_weight"]


@lru_cache(maxsize=8)
def _within(size: int, pad: int, r_max: float) -> np.ndarray:
    """Points of the padded half grid within ``r_max`` cycles per box (cached, read-only)."""
    k = np.fft.fftfreq(size) * size / pad
    kx = np.fft.rfftfreq(size) * size / pad
    out = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) <= r_max * r_max + 1e-9
    out.flags.writeable = False
    return out


@lru_cache(maxsize=8)
def _clipped_shells(box: int, pad: int) -> np.ndarray:
    """Shell index of every padded half-grid point, clipped to the last shell ``box // 2`` (cached, read-only)."""
    out = np.minimum(shell_index(box, 3, pad), box // 2).astype(np.intp)
    out.flags.writeable = False
    return out


def _irfftn(f: Any, size: int, xp: ModuleType) -> Any:
    if xp is np:
        import scipy.fft

        return scipy.fft.irfftn(f, s=(size, size, size), axes=(0, 1, 2), workers=-1)
    return xp.fft.irfftn(f, s=(size, size, size), axes=(0, 1, 2))


def shell_mean_weight(weight: Any, box: int, pad: int = 2, xp: ModuleType = np) -> np.ndarray:
    """Average of ``weight`` (padded half grid) per shell ``0 .. box // 2`` (shells in cycles per box)."""
    sh = shell_index(box, 3, pad, xp).ravel()
    nsh = box // 2 + 1
    keep = sh < nsh
    s = xp.bincount(sh[keep], weights=weight.ravel()[keep].astype(xp.float64), minlength=nsh)
    c = xp.bincount(sh[keep], minlength=nsh)
    return to_host(s / xp.maximum(c, 1))


def fsc_regulariser(curve: np.ndarray, mean_weight: np.ndarray, tau2_fudge: float = 1.0,
                    full_map: bool = False) -> np.ndarray:
    """RELION's regulariser ``1 / (T tau^2)`` per shell from a half-map FSC ``curve``.

    ``SNR = FSC / (1 - FSC)`` for a half map (``2 FSC / (1 - FSC)`` for the map of both halves,
    ``full_map``), ``tau^2 = SNR / <weight>_shell`` and ``reg = <weight>_shell / (T SNR)``.  FSC is
    clipped to [1e-3, 0.999]: shells without signal get a regulariser 1000x their weight.
    """
    c = np.clip(np.asarray(curve, dtype=np.float64), 1e-3, 0.999)
    snr = (2.0 if full_map else 1.0) * c / (1.0 - c)
    return np.asarray(mean_weight, dtype=np.float64) / (tau2_fudge * snr)


def map_from_sums(sums: Any, box: int, pad: int = 2, reg: np.ndarray | float | None = None,
                  r_max: float | None = None, xp: ModuleType = np) -> Any:
    """The map (box, box, box) float32 ``[z, y, x]`` from padded half-grid sums
    (:func:`cryoframe.geometry.fourier.new_sums`, Hermitian-complete: ``enforce_hermitian``).

    ``reg``: see the module docstring.  ``r_max``: frequencies beyond it (cycles per box; default
    ``box / 2``) are zero (shells with rounded radius above it, after windowing to the box).
    As RELION, the windowed map is replaced by its background outside a sphere of radius
    ``box / 2`` (3 px raised-cosine edge, :func:`cryoframe.geometry.masks.soft_mask_outside`) and
    then gridding-corrected.
    """
    dre, dim, weight = sums[..., 0], sums[..., 1], sums[..., 2]
    size = weight.shape[0]
    r_max = box / 2 if r_max is None else r_max
    shc = xp.asarray(_clipped_shells(box, pad))
    if reg is None:
        floor = xp.asarray((shell_mean_weight(weight, box, pad, xp) / 1000.0).astype(weight.dtype))
        denom = xp.maximum(weight, floor[shc])
    elif np.ndim(reg) == 0:
        denom = weight + weight.dtype.type(reg)
    else:
        denom = weight + xp.asarray(np.asarray(reg, dtype=weight.dtype))[shc]
    inside = xp.asarray(_within(size, pad, float(r_max))) & (denom > 0)
    f = xp.empty(denom.shape, dtype=xp.complex64)  # the map itself is single precision
    if xp is np:  # one pass each, no temporaries (CuPy's ufuncs have no where=)
        inv = np.zeros(denom.shape, dtype=denom.dtype)  # 1 / denom inside the sphere of kept frequencies, else 0
        np.divide(1.0, denom, out=inv, where=inside)
        np.multiply(dre, inv, out=f.real)
        np.multiply(dim, inv, out=f.imag)
    else:
        inv = xp.where(inside, 1.0 / xp.where(inside, denom, 1.0), 0.0)
        f.real = dre * inv
        f.imag = dim * inv
    del denom, inside, inv
    unshifted = _irfftn(f, size, xp)
    idx = xp.asarray((np.arange(size // 2 - box // 2, size // 2 - box // 2 + box) - size // 2) % size)
    win = unshifted[idx][:, idx][:, :, idx]  # the central box of the fftshift-ed map, without shifting it all
    vol = soft_mask_outside(win, xp=xp) / gridding_correction(box, pad, xp)
    if r_max < box / 2:  # windowing the padded map leaks a little past the cut-off: cut again in the box
        f = xp.fft.rfftn(vol, axes=(0, 1, 2))
        vol = xp.fft.irfftn(xp.where(shell_index(box, 3, 1, xp) <= r_max, f, 0), s=vol.shape, axes=(0, 1, 2))
    return vol.astype(xp.float32)
