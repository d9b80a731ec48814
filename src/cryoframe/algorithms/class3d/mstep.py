"""M-step of 3D classification: class maps from posterior-weighted Fourier sums, per-class FSC of
the half sums, RELION's FSC regulariser, the masked model volumes ``S (F V_k + (1 - F) V_bar)`` and
the size-weighted RMS density change.

Half sums are the ``(2, P, P, P // 2 + 1, 3)`` arrays of
:func:`cryoframe.algorithms.class3d.estep.estep_partition` for one class.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from cryoframe.backend import to_host
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.backprojector import fsc_regulariser, map_from_sums, shell_mean_weight
from cryoframe.geometry.fsc import shell_index

__all__ = ["class_map", "fourier_fsc", "half_maps", "model_volumes", "rms_change"]


def fourier_fsc(half: np.ndarray, box: int, pad: int, xp: ModuleType = np) -> np.ndarray:
    """FSC (box // 2 + 1,) of the two half estimates ``data / weight`` on the padded grid (no inverse
    transforms: the correlation per shell of the Wiener-free half estimates; weights are floored at
    1/1000 of their shell mean, as :func:`cryoframe.geometry.backprojector.map_from_sums`)."""
    nsh = box // 2 + 1
    sh = shell_index(box, 3, pad, xp).ravel()
    keep = sh < nsh
    est = []
    for h in (0, 1):
        s = xp.array(half[h], dtype=xp.float64)
        fo.enforce_hermitian(s, xp)
        w = s[..., 2]
        floor = xp.asarray(shell_mean_weight(w, box, pad, xp) / 1000.0)
        d = xp.maximum(w, floor[xp.minimum(sh, nsh - 1)].reshape(w.shape))
        d = xp.where(d > 0, d, 1.0)
        est.append(((s[..., 0] / d).ravel()[keep], (s[..., 1] / d).ravel()[keep]))
    (a_re, a_im), (b_re, b_im) = est
    shk = sh[keep]
    num = xp.bincount(shk, weights=a_re * b_re + a_im * b_im, minlength=nsh)
    da = xp.bincount(shk, weights=a_re * a_re + a_im * a_im, minlength=nsh)
    db = xp.bincount(shk, weights=b_re * b_re + b_im * b_im, minlength=nsh)
    out = to_host(num / xp.sqrt(xp.maximum(da * db, 1e-300)))
    out[0] = 1.0
    return np.clip(out, -1.0, 1.0)


def class_map(half: np.ndarray, box: int, pad: int, r_max: float, fsc_curve: np.ndarray, tau2_fudge: float,
              xp: ModuleType = np) -> np.ndarray:
    """The class map (box^3 float32) from both halves' sums, regularised with RELION's
    ``1 / (T tau^2)`` term from ``fsc_curve`` (:func:`cryoframe.geometry.backprojector.fsc_regulariser`)."""
    both = xp.asarray(half[0], dtype=xp.float64) + xp.asarray(half[1], dtype=xp.float64)
    fo.enforce_hermitian(both, xp)
    if not float(to_host(both[..., 2].max())) > 0:
        return np.zeros((box, box, box), dtype=np.float32)
    reg = fsc_regulariser(fsc_curve, shell_mean_weight(both[..., 2], box, pad, xp), tau2_fudge, full_map=True)
    return to_host(map_from_sums(both, box, pad, reg, r_max, xp)).astype(np.float32)


def half_maps(half: np.ndarray, box: int, pad: int, r_max: float, fsc_curve: np.ndarray, tau2_fudge: float,
              xp: ModuleType = np) -> np.ndarray:
    """The two half maps (2, box^3) float32 of one class, each regularised from ``fsc_curve``."""
    out = np.zeros((2, box, box, box), dtype=np.float32)
    for h in (0, 1):
        s = xp.array(half[h], dtype=xp.float64)
        fo.enforce_hermitian(s, xp)
        if float(to_host(s[..., 2].max())) > 0:
            reg = fsc_regulariser(fsc_curve, shell_mean_weight(s[..., 2], box, pad, xp), tau2_fudge)
            out[h] = to_host(map_from_sums(s, box, pad, reg, r_max, xp))
    return out


def model_volumes(volumes: np.ndarray, consensus: np.ndarray, solvent: np.ndarray | None,
                  focus: np.ndarray | None) -> np.ndarray:
    """``S (F V_k + (1 - F) V_bar)`` for every class (K, b, b, b); ``F = 1`` / ``S = 1`` when absent."""
    v = np.asarray(volumes, dtype=np.float32)
    if focus is not None:
        v = focus[None] * v + (1.0 - focus[None]) * consensus[None]
    if solvent is not None:
        v = v * solvent[None]
    return v.astype(np.float32)


def rms_change(new: np.ndarray, old: np.ndarray, sizes: np.ndarray, reference: np.ndarray,
               mask: np.ndarray | None = None) -> float:
    """Size-weighted RMS of the voxel change of the class maps, relative to the RMS of ``reference``
    (within ``mask`` when given): classes weigh by their share of the particles."""
    w = np.asarray(sizes, dtype=np.float64)
    w = w / max(w.sum(), 1e-12)
    m = 1.0 if mask is None else mask
    d = (new - old) * m
    per = np.sqrt(np.mean(d.reshape(len(d), -1) ** 2, axis=1))
    ref = float(np.sqrt(np.mean((reference * m) ** 2))) or 1.0
    return float(np.sum(w * per) / ref)


def decay(sums: Any, new: Any, lr: float) -> Any:
    """O-EM decaying sufficient statistics: ``(1 - lr) sums + new`` (``new`` when ``sums`` is None)."""
    if sums is None:
        return np.asarray(new, dtype=np.float64)
    return (1.0 - lr) * sums + new
