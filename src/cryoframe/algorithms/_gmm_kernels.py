"""Fused E-step + sufficient-statistics kernels for the 1-D Gaussian mixture (CPU side).

One pass over a partition ``x`` (1-D, float32/float64, any units) under the current parameters
computes, per sample, the weighted log-densities of the K components, their log-sum-exp (the
sample's log-likelihood) and the responsibilities ``r_k``, and accumulates in float64::

    out[0:K]    = N_k = Σ r_k
    out[K:2K]   = S_k = Σ r_k (x - c)
    out[2K:3K]  = Q_k = Σ r_k (x - c)²
    out[3K]     = Σ log p(x)          (natural log, the sum over the partition's samples)

``c`` is a global centre (the data mean) that keeps the second moment well conditioned.
Parameters enter as ``cst_k = log w_k + log pc_k - ½ log 2π``, ``pc_k = 1/σ_k`` (sklearn's
``precisions_cholesky_``) and ``mpc_k = μ_k · pc_k``, so ``log w_k N(x | μ_k, σ_k²) =
cst_k - ½ (x·pc_k - mpc_k)²`` (the same operation order as scikit-learn).

``stats_numba`` (a single loop, no temporaries) and ``stats_numpy`` (its twin, blocked so the
(m, K) temporaries stay small) perform the same floating-point operations per sample; they
differ only in summation order, i.e. by a few ulps.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np

from cryoframe.errors import InputError

__all__ = ["HAVE_NUMBA", "kernel_params", "stats_numba", "stats_numpy", "stats_closed", "partition_stats", "n_stats",
           "log_resp", "predict_block"]

# numba is a dependency, but the twin keeps the estimator usable without it; it is imported (and
# the kernel loaded from numba's on-disk cache or compiled) on first use, not at import time.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_jitted: Any = None
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_TWIN_BLOCK = 1 << 16  # rows per block of the NumPy twin: (65536, K) float64 temporaries
_PREDICT_ROWS = 1 << 18
_CLOSED_BLOCK = 1 << 15  # rows per block of the K <= 2 closed form: 256 KiB float64 temporaries (L2-resident)


def n_stats(k: int) -> int:
    """Length of the statistics vector for ``k`` components (3K + 1)."""
    return 3 * k + 1


def kernel_params(
    weights: np.ndarray, means: np.ndarray, precisions_chol: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(cst, pc, mpc)`` float64 vectors (K,) used by every kernel (CPU and GPU)."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    mu = np.asarray(means, dtype=np.float64).ravel()
    pc = np.ascontiguousarray(np.asarray(precisions_chol, dtype=np.float64).ravel())
    cst = np.log(w) + np.log(pc) - _HALF_LOG_2PI
    return np.ascontiguousarray(cst), pc, np.ascontiguousarray(mu * pc)


def stats_numpy(x: np.ndarray, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray, c: float) -> np.ndarray:
    """NumPy twin of :func:`stats_numba`: the (3K+1,) float64 statistics of ``x``."""
    k = cst.shape[0]
    out = np.zeros(n_stats(k), dtype=np.float64)
    x = np.asarray(x).ravel()
    for s in range(0, x.shape[0], _TWIN_BLOCK):
        xb = x[s : s + _TWIN_BLOCK].astype(np.float64, copy=False)
        y = xb[:, None] * pc - mpc
        lp = cst - 0.5 * y * y
        m = lp.max(axis=1)
        e = np.exp(lp - m[:, None])
        tot = e.sum(axis=1)
        lse = m + np.log(tot)
        r = e * (1.0 / tot)[:, None]
        d = xb - c
        rd = r * d[:, None]
        out[:k] += r.sum(axis=0)
        out[k : 2 * k] += rd.sum(axis=0)
        out[2 * k : 3 * k] += (rd * d[:, None]).sum(axis=0)
        out[3 * k] += lse.sum()
    return out


def stats_closed(x: np.ndarray, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray, c: float) -> np.ndarray:
    """The (3K+1,) statistics for K = 1 or 2 in closed form, NumPy only (no compiled kernel to load).

    With ``d = x - c`` every weighted log-density is a quadratic ``lp_k = a_k d² + b_k d + g_k``, so
    for two components the responsibilities are a logistic function of ``Δ = lp_1 - lp_0`` and
    ``log p = max(lp_0, lp_1) + log1p(exp(-|Δ|))``: a handful of ufunc passes and dot products per
    block, no (m, K) temporaries, no log-sum-exp over K.  Same statistics as :func:`stats_numpy`
    up to rounding (≈1e-12 relative)."""
    k = cst.shape[0]
    if k > 2:
        raise ValueError("stats_closed handles one or two components")
    e = c * pc - mpc  # x·pc - mpc = pc·d + e
    a, b, g = -0.5 * pc * pc, -pc * e, cst - 0.5 * e * e
    out = np.zeros(n_stats(k), dtype=np.float64)
    x = np.asarray(x).ravel()
    m = min(x.shape[0], _CLOSED_BLOCK)
    d, t, q, r = (np.empty(m) for _ in range(4))
    for s in range(0, x.shape[0], _CLOSED_BLOCK):
        xb = x[s : s + _CLOSED_BLOCK]
        nb = xb.shape[0]
        db, tb, qb, rb = d[:nb], t[:nb], q[:nb], r[:nb]
        db[...] = xb  # float32 data: widen before centring (float32 - c would round in float32)
        db -= c
        sd, sdd = float(db.sum()), float(np.einsum("i,i", db, db))
        if k == 1:
            out[0] += nb
            out[1] += sd
            out[2] += sdd
            out[3] += float(a[0] * sdd + b[0] * sd + g[0] * nb)
            continue
        # Δ = (Δa·d + Δb)·d + Δg, then t = exp(-|Δ|), q = 1/(1+t)
        np.multiply(db, a[1] - a[0], out=tb)
        tb += b[1] - b[0]
        tb *= db
        tb += g[1] - g[0]
        pos = tb >= 0
        lmax = float(np.maximum(tb, 0.0, out=qb).sum())  # Σ max(Δ, 0): log p = lp_0 + max(Δ,0) + log1p(e^-|Δ|)
        np.abs(tb, out=tb)
        np.negative(tb, out=tb)
        np.exp(tb, out=tb)
        lsp = float(np.log1p(tb, out=qb).sum())
        np.add(tb, 1.0, out=qb)
        np.reciprocal(qb, out=qb)  # q = 1/(1+t): the larger responsibility, t·q the smaller
        tb *= qb
        np.copyto(rb, tb)
        np.copyto(rb, qb, where=pos)  # r_1 = q where Δ >= 0 else t·q
        np.copyto(qb, tb, where=pos)  # r_0 = t·q where Δ >= 0 else q
        for j, rj in ((0, qb), (1, rb)):
            out[j] += float(rj.sum())
            np.multiply(rj, db, out=tb)
            out[2 + j] += float(tb.sum())
            out[4 + j] += float(np.einsum("i,i", tb, db))
        out[6] += float(a[0] * sdd + b[0] * sd + g[0] * nb) + lmax + lsp
    return out


def _stats_loop(x, cst, pc, mpc, c, out):  # noqa: ANN001, ANN202 - compiled by numba below
    k = cst.shape[0]
    e = np.empty(k, dtype=np.float64)
    for i in range(x.shape[0]):
        xi = np.float64(x[i])
        m = -np.inf
        for j in range(k):
            y = xi * pc[j] - mpc[j]
            v = cst[j] - 0.5 * y * y
            e[j] = v
            if v > m:
                m = v
        tot = 0.0
        for j in range(k):
            v = math.exp(e[j] - m)
            e[j] = v
            tot += v
        inv = 1.0 / tot
        d = xi - c
        for j in range(k):
            r = e[j] * inv
            rd = r * d
            out[j] += r
            out[k + j] += rd
            out[2 * k + j] += rd * d
        out[3 * k] += m + math.log(tot)


def _stats_loop_jit() -> Any:
    global _jitted
    if _jitted is None:
        try:
            import numba
        except ImportError as exc:  # pragma: no cover
            raise RuntimeError("numba is not installed") from exc
        _jitted = numba.njit(fastmath=False, cache=True, nogil=True)(_stats_loop)
    return _jitted


def stats_numba(x: np.ndarray, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray, c: float) -> np.ndarray:
    """The (3K+1,) float64 statistics of ``x`` in one compiled loop (releases the GIL)."""
    x = np.ascontiguousarray(np.asarray(x).ravel())
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    out = np.zeros(n_stats(cst.shape[0]), dtype=np.float64)
    _stats_loop_jit()(x, cst, pc, mpc, float(c), out)
    return out


def partition_stats(
    x: np.ndarray, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray, c: float, device: str = "cpu"
) -> np.ndarray:
    """Statistics of one host or device partition on ``device`` ('cpu' or 'gpu')."""
    if device == "gpu":
        from cryoframe.backend.kernels import gmm_stats

        return gmm_stats(x, cst, pc, mpc, c)
    if hasattr(x, "get") and not isinstance(x, np.ndarray):  # a device array on the CPU path
        x = x.get()
    if cst.shape[0] <= 2:  # closed form: as fast as the compiled loop, without loading numba
        return stats_closed(x, cst, pc, mpc, c)
    return stats_numba(x, cst, pc, mpc, c) if HAVE_NUMBA else stats_numpy(x, cst, pc, mpc, c)


def log_resp(x: np.ndarray, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``(log p(x), log r)`` with shapes (m,) and (m, K); used for prediction."""
    xb = np.asarray(x, dtype=np.float64).ravel()
    y = xb[:, None] * pc - mpc
    lp = cst - 0.5 * y * y
    m = lp.max(axis=1)
    lse = m + np.log(np.exp(lp - m[:, None]).sum(axis=1))
    with np.errstate(under="ignore"):
        return lse, lp - lse[:, None]


def predict_block(part: Any, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray, what: str) -> np.ndarray:
    """``what``: "label" (m,) int64, "proba" (m, K) or "score" (m,) log p(x) of one 1-D block, computed
    in bounded memory."""
    x = part.get() if not isinstance(part, np.ndarray) and hasattr(part, "get") else part
    x = np.asarray(x).ravel()
    bad = x.shape[0] - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise InputError(f"X contains {bad} non-finite value(s) (NaN or ±inf)")
    shape = (x.shape[0], cst.shape[0]) if what == "proba" else (x.shape[0],)
    out = np.empty(shape, dtype=np.int64 if what == "label" else np.float64)
    for s in range(0, x.shape[0], _PREDICT_ROWS):
        lse, lr = log_resp(x[s : s + _PREDICT_ROWS], cst, pc, mpc)
        if what == "label":
            out[s : s + _PREDICT_ROWS] = lr.argmax(axis=1)
        elif what == "proba":
            out[s : s + _PREDICT_ROWS] = np.exp(lr)
        else:
            out[s : s + _PREDICT_ROWS] = lse
    return out
