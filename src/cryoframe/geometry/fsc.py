"""Fourier shell correlation of half maps, resolution at a threshold, FSC weighting.

Shells are integer radii (rounded, cycles per box) ``0 .. box // 2``; shell ``i`` has spatial
frequency ``i / (box * psize_A)`` 1/Å.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from cryoframe.backend import to_host

__all__ = ["fsc", "fsc_weighted", "resolution_at", "shell_frequencies", "shell_index"]


def shell_index(box: int, ndim: int = 3, pad: int = 1, xp: ModuleType = np) -> Any:
    """Rounded radius (int64, cycles per ``box``) of every point of the half transform of a
    ``(pad * box)``-sized ``ndim``-D grid (radius measured in cycles per ``box``); cached."""
    return xp.asarray(_shell_index(box, ndim, pad))


@lru_cache(maxsize=16)
def _shell_index(box: int, ndim: int, pad: int) -> np.ndarray:
    n = pad * box
    k = np.fft.fftfreq(n) * n / pad
    kx = np.fft.rfftfreq(n) * n / pad
    if ndim == 3:
        r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    else:
        r2 = k[:, None] ** 2 + kx[None, :] ** 2
    out = np.rint(np.sqrt(r2)).astype(np.int64)
    out.flags.writeable = False
    return out


def shell_frequencies(box: int, psize_A: float) -> np.ndarray:
    """Spatial frequency (1/Å) of shells ``0 .. box // 2``."""
    return np.arange(box // 2 + 1) / (box * psize_A)


def fsc(map_a: Any, map_b: Any, mask: Any | None = None, xp: ModuleType = np) -> np.ndarray:
    """FSC (box // 2 + 1,) float64 between two real ``[z, y, x]`` maps (each multiplied by ``mask``)."""
    a = xp.asarray(map_a, dtype=xp.float64)
    b = xp.asarray(map_b, dtype=xp.float64)
    if mask is not None:
        m = xp.asarray(mask, dtype=xp.float64)
        a, b = a * m, b * m
    box = a.shape[0]
    fa = xp.fft.rfftn(a)
    fb = xp.fft.rfftn(b)
    sh = shell_index(box, 3, 1, xp).ravel()
    nsh = box // 2 + 1
    keep = sh < nsh
    sh = sh[keep]
    # half-grid multiplicity is irrelevant to the ratio up to the x = 0 / Nyquist planes; count all once
    num = xp.bincount(sh, weights=(fa * xp.conj(fb)).real.ravel()[keep], minlength=nsh)
    da = xp.bincount(sh, weights=(xp.abs(fa) ** 2).ravel()[keep], minlength=nsh)
    db = xp.bincount(sh, weights=(xp.abs(fb) ** 2).ravel()[keep], minlength=nsh)
    out = to_host(num / xp.sqrt(xp.maximum(da * db, 1e-300)))
    return np.clip(out[:nsh], -1.0, 1.0)


def resolution_at(curve: np.ndarray, box: int, psize_A: float, threshold: float) -> float:
    """Resolution (Å) where ``curve`` first drops below ``threshold`` (linear interpolation between
    shells); Nyquist ``2 * psize_A`` when it never does, ``inf`` when shell 1 is already below."""
    f = shell_frequencies(box, psize_A)
    c = np.asarray(curve, dtype=np.float64)
    for i in range(1, len(c)):
        if c[i] < threshold:
            if i == 1:
                return float("inf")
            t = (c[i - 1] - threshold) / (c[i - 1] - c[i])
            return float(1.0 / (f[i - 1] + t * (f[i] - f[i - 1])))
    return float(2.0 * psize_A)


def fsc_weighted(vol: Any, curve: np.ndarray, xp: ModuleType = np) -> Any:
    """``vol`` filtered by ``sqrt(2 FSC / (1 + FSC))`` per shell (0 where FSC <= 0; Rosenthal &
    Henderson's C_ref, the FSC weighting RELION's post-processing applies)."""
    c = np.clip(np.asarray(curve, dtype=np.float64), 0.0, 1.0)
    w = np.sqrt(2.0 * c / (1.0 + c))
    box = vol.shape[0]
    sh = shell_index(box, 3, 1, np)
    wgrid = np.where(sh < len(w), w[np.minimum(sh, len(w) - 1)], 0.0)
    f = xp.fft.rfftn(xp.asarray(vol, dtype=xp.float64))
    return xp.fft.irfftn(f * xp.asarray(wgrid), s=vol.shape, axes=(0, 1, 2)).astype(xp.float32)
