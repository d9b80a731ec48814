"""Compiled (numba) CPU kernels of the 2D-classification E-step.

Each kernel fuses a chain of element-wise NumPy operations over the (particle, class, angle,
translation) sample arrays into one pass without temporaries; :mod:`.estep` uses them for NumPy
inputs (``fused=True``) and keeps the array-module expressions as the twin for CuPy and for the
tests that compare the two.  Kernels are compiled on first use (cached on disk) and release the
GIL, so dask threads run partitions in parallel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["bmat", "posterior", "score", "shift_back"]

_jit: dict[str, Any] = {}


def _bmat_loop(ar_r, ar_i, pc, ps, out):  # noqa: ANN001, ANN202 - compiled by numba
    nr, nf = ar_r.shape
    ns = pc.shape[1]
    for f in range(nf):
        for r in range(nr):
            a_r = ar_r[r, f]
            a_i = ar_i[r, f]
            for t in range(ns):
                c = pc[f, t]
                s = ps[f, t]
                out[f, r, t] = a_r * c + a_i * s
                out[nf + f, r, t] = a_r * s - a_i * c


def _shift_back_loop(v, pct, pst, yr, yi):  # noqa: ANN001, ANN202
    nr, ns, nf2 = v.shape
    nf = nf2 // 2
    for r in range(nr):
        for t in range(ns):
            for f in range(nf):
                c = pct[t, f]
                s = pst[t, f]
                vr = v[r, t, f]
                vi = v[r, t, nf + f]
                yr[r, f] += c * vr - s * vi
                yi[r, f] += c * vi + s * vr


def _score_loop(cross, q, lo, hi, lp, scaled, prec, logl, alpha):  # noqa: ANN001, ANN202
    c, nr, ns = cross.shape
    for i in range(c):
        for r in range(nr):
            qq = q[i, r]
            den = max(2.0 * qq + prec, 1e-30)
            occam = 0.5 * math.log(1.0 + 2.0 * qq / prec) if prec > 0 else 0.0
            for t in range(ns):
                x = cross[i, r, t]
                if scaled:
                    a = min(max((x + prec) / den, lo), hi)
                    alpha[i, r, t] = a
                    logl[i, r, t] = a * x - a * a * qq - 0.5 * prec * (a - 1.0) ** 2 - occam + lp
                else:
                    logl[i, r, t] = x - qq + lp


def _posterior_loop(logl, top, zsum, wk, label, best, pmax, ess):  # noqa: ANN001, ANN202
    c, nk, nrs = logl.shape
    for i in range(c):
        m = -np.inf
        for k in range(nk):
            for j in range(nrs):
                if logl[i, k, j] > m:
                    m = logl[i, k, j]
        tot = 0.0
        for k in range(nk):
            for j in range(nrs):
                v = math.exp(logl[i, k, j] - m)
                logl[i, k, j] = v
                tot += v
        inv = 1.0 / tot
        sq = 0.0
        pm = 0.0
        lab = 0
        for k in range(nk):
            s = 0.0
            for j in range(nrs):
                v = logl[i, k, j] * inv
                logl[i, k, j] = v
                s += v
                sq += v * v
                if v > pm:
                    pm = v
            wk[i, k] = s
            if s > wk[i, lab]:
                lab = k
        bj = 0
        for j in range(nrs):
            if logl[i, lab, j] > logl[i, lab, bj]:
                bj = j
        top[i] = m
        zsum[i] = tot
        label[i] = lab
        best[i] = bj
        pmax[i] = pm
        ess[i] = 1.0 / sq


def _get(name: str, fn: Any) -> Any:
    if name not in _jit:
        import numba

        _jit[name] = numba.njit(cache=True, nogil=True)(fn)
    return _jit[name]


def bmat(ar: np.ndarray, pc: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """``[Re B; Im B]`` (2F, R S) float32, ``B(f, (r, t)) = conj(ar[r, f]) (pc + i ps)[f, t]``."""
    nr, nf = ar.shape
    out = np.empty((2 * nf, nr, pc.shape[1]), dtype=np.float32)
    _get("bmat", _bmat_loop)(np.ascontiguousarray(ar.real, dtype=np.float32),
                             np.ascontiguousarray(ar.imag, dtype=np.float32), pc, ps, out)
    return out.reshape(2 * nf, -1)


def shift_back(v: np.ndarray, pct: np.ndarray, pst: np.ndarray) -> np.ndarray:
    """``y[r, f] = sum_t (pct + i pst)[t, f] (v[r, t, f] + i v[r, t, F + f])``: (R, F) complex64 from
    ``v`` (R, S, 2F) float32 and the transposed phase table (S, F)."""
    nr, _, nf2 = v.shape
    yr = np.zeros((nr, nf2 // 2), dtype=np.float32)
    yi = np.zeros((nr, nf2 // 2), dtype=np.float32)
    _get("shift_back", _shift_back_loop)(v, pct, pst, yr, yi)
    return yr + 1j * yi


def score(cross: np.ndarray, q: np.ndarray, srange: tuple[float, float] | None, lp: float,
          logl: np.ndarray, alpha: np.ndarray | None, prec: float = 0.0) -> None:
    """Write ``logl`` and ``alpha = a`` for one class (``cross`` (c, R, S), ``q`` (c, R), outputs
    (c, R, S)): without a range ``a = 1`` and ``logl = cross - q + lp``; with one, the scale prior
    of precision ``prec`` (see :func:`.estep.scale_score`)."""
    scaled = srange is not None
    lo, hi = (1.0, 1.0) if srange is None else (float(srange[0]), float(srange[1]))
    _get("score", _score_loop)(cross, np.ascontiguousarray(q, dtype=np.float32), lo, hi, float(lp), scaled,
                               float(prec), logl, logl if alpha is None else alpha)


def posterior(logl: np.ndarray) -> dict[str, np.ndarray]:
    """Normalise ``logl`` (c, K, R S) in place into posteriors; returns per particle ``top`` (max
    log-score), ``zsum`` (sum of exp(logl - top)), ``wk`` (c, K) class mass, ``label``, ``best``
    (flat (r, t) of the label class's best sample), ``pmax`` and ``ess`` (1 / sum p^2)."""
    c, nk = logl.shape[:2]
    out = {"top": np.empty(c), "zsum": np.empty(c), "wk": np.zeros((c, nk)), "label": np.empty(c, np.int64),
           "best": np.empty(c, np.int64), "pmax": np.empty(c), "ess": np.empty(c)}
    _get("posterior", _posterior_loop)(logl, out["top"], out["zsum"], out["wk"], out["label"], out["best"],
                                       out["pmax"], out["ess"])
    return out
