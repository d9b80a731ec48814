"""Particles as Fourier components: one streaming pass over the images computes, for the
components within the largest search radius (:class:`cryoframe.algorithms.posesearch.Components`),
the image transforms ``X`` (n, m) complex64 and CTFs ``C`` (n, m) float32 — everything the
iterations need, so minibatches never touch the image store again."""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoframe.algorithms.posesearch import Components
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.ctf import ctf_grid

__all__ = ["lowpass_mask", "noise_scales", "particle_components", "shell_power", "shell_tau2"]


def particle_components(images: Any, rows: np.ndarray, comps: Components, box: int, psize_A: float,
                        ctf: dict[str, np.ndarray] | None, block: int = 1024,
                        noise_power: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(X, C, P)`` of the particles ``rows`` (indices into ``images`` (N, box, box), NumPy or dask;
    ``ctf`` arrays are indexed by the same rows).  CTF = 1 when ``ctf`` is None.  ``P`` (n,) float64
    when ``noise_power`` (else None): each particle's mean power ``|F|^2`` over the outer half of its
    transform (radii box/4 .. box/2), where the CTF envelope leaves noise: its noise level, for
    :func:`noise_scales`."""
    n = len(rows)
    m = len(comps)
    X = np.empty((n, m), dtype=np.complex64)
    C = np.ones((n, m), dtype=np.float32)
    P = np.empty(n, dtype=np.float64) if noise_power else None
    kx, ky, flat = fo.image_freqs(box)
    outer = flat[np.hypot(kx, ky) >= box / 4]
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    for s in range(0, n, block):
        o = order[s:s + block]
        r = srt[s:s + block]
        lo, hi = int(r[0]), int(r[-1]) + 1
        chunk = images[lo:hi]
        chunk = np.asarray(chunk.compute() if hasattr(chunk, "compute") else chunk, dtype=np.float32)[r - lo]
        f = fo.cfft2(chunk)
        X[o] = comps.take(f, box)
        if P is not None:
            P[o] = (np.abs(f.reshape(len(r), -1)[:, outer]) ** 2).mean(1)
        if ctf is not None:
            C[o] = comps.take(ctf_grid(box, psize_A, {k: v[r] for k, v in ctf.items()}), box)
    return X, C, P


def noise_scales(power: np.ndarray) -> np.ndarray:
    """Per-particle factors (n,) that bring every particle to the median noise level: the square root
    of its outer-shell power (:func:`particle_components`) over the median's.  RELION normalises each
    particle's background at extraction; particles that were not (raw counts, exposures of different
    dose, another program's extraction) would otherwise weigh in by their own scale.  1 where the
    power is not positive (an empty or low-passed stack)."""
    med = float(np.median(power)) if len(power) else 0.0
    if not med > 0:
        return np.ones(len(power))
    return np.where(power > 0, np.sqrt(np.maximum(power, 1e-30) / med), 1.0)


def shell_power(values: np.ndarray, comps: Components, m: int | None = None) -> np.ndarray:
    """Mean ``|v|^2`` (over particles and components) per integer shell ``0 .. ceil(r_max)`` of
    ``values`` (n, m) at the components; shells without components get their neighbour's value."""
    m = values.shape[1] if m is None else m
    sh = np.rint(comps.radius[:m]).astype(np.int64)
    ns = int(np.ceil(comps.r_max)) + 1
    p = (np.abs(values[:, :m]) ** 2).mean(0).astype(np.float64)
    s = np.bincount(sh, weights=p, minlength=ns)[:ns]
    c = np.bincount(sh, minlength=ns)[:ns]
    out = np.where(c > 0, s / np.maximum(c, 1), np.nan)
    good = np.flatnonzero(np.isfinite(out))
    return np.interp(np.arange(ns), good, out[good]) if len(good) else np.ones(ns)


def shell_tau2(vol: np.ndarray, box: int) -> np.ndarray:
    """Shell power (box // 2 + 1,) of a volume's transform (the prior ``tau^2``)."""
    from cryoframe.geometry.fsc import shell_index

    f = fo.cfftn(vol.astype(np.float64))
    sh = shell_index(box, 3, 1).ravel()
    ns = box // 2 + 1
    keep = sh < ns
    p = np.bincount(sh[keep], weights=(np.abs(f) ** 2).ravel()[keep], minlength=ns)
    c = np.bincount(sh[keep], minlength=ns)
    return p / np.maximum(c, 1)


def lowpass_mask(box: int, r: float) -> np.ndarray:
    """Half-grid (box, box, box // 2 + 1) mask of frequencies within ``r`` cycles per box."""
    from cryoframe.geometry.fsc import shell_index

    return (shell_index(box, 3, 1) <= r).astype(np.float64)
