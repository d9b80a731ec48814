"""The 1-D Gaussian mixture's EM, with no scikit-learn import (``subset`` fits in a fraction of a
second, so importing scikit-learn would cost more than the fit).

The data (one value per particle, in whatever unit the column carries: Å, px, a score...) stay
where they are: a NumPy array is cut into chunks processed by a thread pool, a dask array or
dask dataframe column keeps its own partitions and is computed by whatever scheduler
``dask.compute`` picks up (a ``distributed.Client``, ``dask.config.set(scheduler=...)``).
Every EM iteration is ONE pass over the partitions: each partition runs a fused kernel (E-step
for the current parameters + float64 sufficient statistics, see ``_gmm_kernels``), the (3K+1,)
vectors are tree-reduced and the M-step runs on the driver with scikit-learn's formulas.
Started from the same parameters, the fit follows scikit-learn's
``GaussianMixture(covariance_type="full")`` iteration by iteration.

The initialisation is k-means++ seeding (scikit-learn's greedy variant: 2 + ⌊ln K⌋ candidates per
centre) refined by Lloyd iterations on a uniform sample, in NumPy (1-D: assignment is a
``searchsorted`` against the midpoints of the sorted centres).

:func:`fit_mixture` is the whole fit; :class:`cryoframe.algorithms.gmm.GaussianMixture` is its
scikit-learn estimator face.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryoframe.algorithms import _gmm_kernels as kern
from cryoframe.backend import available_cores
from cryoframe.errors import InputError

__all__ = ["GMMInputError", "MixtureFit", "check_random_state", "fit_mixture", "is_dask_array", "is_dask_frame"]


class GMMInputError(InputError, ValueError):
    """Bad parameters or data: an :class:`InputError` (the CLI prints one line) that is also the
    ``ValueError`` scikit-learn's estimator conventions expect."""

INIT_PARAMS = ("k-means++", "kmeans", "random", "random_from_data")
_MAX_CHUNK = 1 << 21  # rows per internal NumPy chunk on the CPU (16 MiB of float64)
_GPU_CHUNK = 1 << 26
_SPLIT_EVERY = 8  # fan-in of the dask tree reduction
_HEAD = 4096  # values per partition scanned cheaply for distinct values
_EPS10 = 10 * np.finfo(np.float64).eps


# -- partition functions: module level so distributed workers unpickle them by reference ---------


def _as_1d(part: Any) -> Any:
    """One partition as a 1-D float array (host NumPy, or left on the device when it is there)."""
    if hasattr(part, "iloc"):  # pandas Series / one-column DataFrame, pyarrow dtypes included
        if part.ndim == 2:
            part = part.iloc[:, 0]
        return part.to_numpy(dtype="float64", na_value=np.nan)
    if not isinstance(part, np.ndarray) and hasattr(part, "get"):  # a device array
        return part.ravel()
    x = np.asarray(part).ravel()
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def _host_1d(part: Any) -> np.ndarray:
    x = _as_1d(part)
    return x.get() if not isinstance(x, np.ndarray) else x


def _summary(part: Any, k: int) -> tuple[int, int, float, float, float, np.ndarray]:
    """(n, non-finite count, Σx, min, max, ≤k smallest distinct values of the head)."""
    x = _host_1d(part)
    n = int(x.shape[0])
    if n == 0:
        return 0, 0, 0.0, math.inf, -math.inf, np.empty(0)
    bad = n - int(np.count_nonzero(np.isfinite(x)))
    return n, bad, float(x.sum(dtype=np.float64)), float(x.min()), float(x.max()), np.unique(x[:_HEAD])[:k]


def _take(part: Any, idx: np.ndarray) -> np.ndarray:
    return _host_1d(part)[idx].astype(np.float64)


def _distinct(part: Any, k: int) -> np.ndarray:
    return np.unique(_host_1d(part))[:k]


def _part_stats(part: Any, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray, c: float, device: str) -> np.ndarray:
    """Fused E-step + (3K+1,) float64 sufficient statistics of one partition."""
    return kern.partition_stats(_as_1d(part), cst, pc, mpc, c, device)


def _sum(*vectors: np.ndarray) -> np.ndarray:
    out = np.array(vectors[0], dtype=np.float64, copy=True)
    for v in vectors[1:]:
        out += v
    return out


def _predict_frame(part: Any, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray, what: str) -> Any:
    import pandas as pd

    out = kern.predict_block(_host_1d(part), cst, pc, mpc, what)
    if what == "proba":
        return pd.DataFrame(out, index=part.index, columns=list(range(cst.shape[0])))
    return pd.Series(out, index=part.index, name=what)


# -- data sources: a list of partitions plus the way to map over them ------------------------------


def is_dask_array(X: Any) -> bool:
    if "dask" not in sys.modules:  # nothing can be a dask collection yet
        return False
    import dask

    if not dask.is_dask_collection(X):
        return False
    import dask.array as da

    return isinstance(X, da.Array)


def is_dask_frame(X: Any) -> bool:
    if "dask" not in sys.modules:  # nothing can be a dask collection yet
        return False
    import dask

    if not dask.is_dask_collection(X):
        return False
    import dask.dataframe as dd

    return isinstance(X, dd.DataFrame | dd.Series)


def _host_array(X: Any) -> np.ndarray:
    """A host 1-D float array from NumPy-like input (the estimator runs scikit-learn's checks first)."""
    if hasattr(X, "iloc"):
        if X.ndim == 2 and X.shape[1] != 1:
            raise GMMInputError(f"X must have one column (a 1-D feature), got {X.shape[1]}")
        x = _as_1d(X)
    else:
        x = np.asarray(X)
        if x.ndim > 2 or (x.ndim == 2 and x.shape[1] != 1) or x.ndim == 0:
            raise GMMInputError(f"X must have shape (n,) or (n, 1), got {x.shape}")
        x = x.ravel()
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise GMMInputError(f"X contains {bad} non-finite value(s) (NaN or ±inf) among {x.size} values")
    return x


class _Source:
    """Partitions of the input: NumPy chunks (thread pool) or dask delayed parts (dask.compute)."""

    def __init__(self, X: Any, device: str, host: Callable[[Any], np.ndarray] = _host_array) -> None:
        self.device = device
        self.pool: ThreadPoolExecutor | None = None
        if is_dask_array(X):
            if X.ndim not in (1, 2) or (X.ndim == 2 and X.shape[1] != 1):
                raise GMMInputError(f"X must have shape (n,) or (n, 1), got {X.shape}")
            self.lazy, self.parts = True, list(X.to_delayed().ravel())
        elif is_dask_frame(X):
            if X.ndim == 2 and len(X.columns) != 1:
                raise GMMInputError(f"X must have one column (a 1-D feature), got {len(X.columns)}")
            self.lazy, self.parts = True, list(X.to_delayed())
        else:
            x = host(X)
            ncpu = available_cores()
            rows = _GPU_CHUNK if device == "gpu" else max(1 << 16, min(_MAX_CHUNK, -(-x.shape[0] // (4 * ncpu))))
            self.lazy, self.parts = False, [x[s : s + rows] for s in range(0, max(x.shape[0], 1), rows)]
            if device == "cpu" and len(self.parts) > 1 and ncpu > 1:
                self.pool = ThreadPoolExecutor(max_workers=min(ncpu, len(self.parts)))

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def to_device(self) -> None:
        """Move NumPy chunks to the GPU once, for every later pass."""
        if self.device == "gpu" and not self.lazy:
            from cryoframe.backend import get_array_module, to_device

            cp = get_array_module("gpu")
            self.parts = [to_device(p, cp) for p in self.parts]

    def map(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], which: Sequence[int]) -> list[Any]:
        """``[fn(parts[i], *args[j]) for j, i in enumerate(which)]``, in parallel."""
        if self.lazy:
            import dask

            tasks = [dask.delayed(fn, pure=True)(self.parts[i], *a) for i, a in zip(which, args, strict=True)]
            return list(dask.compute(*tasks))
        calls = [(self.parts[i], *a) for i, a in zip(which, args, strict=True)]
        if self.pool is None:
            return [fn(*c) for c in calls]
        return list(self.pool.map(lambda c: fn(*c), calls))

    def map_all(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        return self.map(fn, [args] * len(self.parts), list(range(len(self.parts))))

    def reduce_sum(self, fn: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
        """Σ over partitions of ``fn(part, *args)``: one pass, tree-reduced by dask when lazy."""
        if not self.lazy:
            return _sum(*self.map_all(fn, *args))
        from cryoframe.distributed.mapreduce import map_partitions

        return map_partitions(fn, self.parts, *args, reduce=_sum, fan_in=_SPLIT_EVERY)


# -- initialisation ----------------------------------------------------------------------------------


def check_random_state(seed: Any) -> np.random.RandomState:
    """scikit-learn's ``check_random_state``: None -> the global RandomState, int -> a new one."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise GMMInputError(f"{seed!r} cannot be used to seed a numpy.random.RandomState instance")


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of every value (1-D; ties go to the lower centre)."""
    order = np.argsort(centres, kind="stable")
    cs = centres[order]
    return order[np.searchsorted(0.5 * (cs[1:] + cs[:-1]), x, side="right")]


def kmeans_1d(x: np.ndarray, k: int, rs: np.random.RandomState, max_iter: int = 300, tol: float = 1e-4) -> np.ndarray:
    """Labels of a 1-D k-means: greedy k-means++ seeds, then Lloyd until the squared centre shift is
    ≤ ``tol`` × the data variance (scikit-learn's criterion); an emptied cluster keeps its centre."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centres = np.empty(k)
    centres[0] = x[rs.randint(n)]
    d2 = (x - centres[0]) ** 2
    pot = float(d2.sum())
    for j in range(1, k):
        if pot <= 0:  # fewer distinct values than centres: repeat one
            centres[j] = centres[0]
            continue
        cand_idx = np.searchsorted(np.cumsum(d2), rs.uniform(size=trials) * pot)
        cand_idx = np.clip(cand_idx, None, n - 1)
        cand_d2 = np.minimum(d2, (x[None, :] - x[cand_idx][:, None]) ** 2)
        best = int(np.argmin(cand_d2.sum(axis=1)))
        centres[j], d2 = x[cand_idx[best]], cand_d2[best]
        pot = float(d2.sum())
    thr = tol * float(np.var(x))
    labels = _assign(x, centres)
    for _ in range(max_iter):
        cnt = np.bincount(labels, minlength=k)
        sums = np.bincount(labels, weights=x, minlength=k)
        new = np.where(cnt > 0, sums / np.maximum(cnt, 1), centres)
        shift = float(((new - centres) ** 2).sum())
        centres = new
        labels = _assign(x, centres)
        if shift <= thr:
            break
    return labels


def _resp(xs: np.ndarray, rs: np.random.RandomState, k: int, init_params: str) -> np.ndarray:
    n = xs.shape[0]
    resp = np.zeros((n, k))
    if init_params in ("k-means++", "kmeans"):
        resp[np.arange(n), kmeans_1d(xs, k, rs)] = 1
    elif init_params == "random":
        resp = rs.uniform(size=(n, k))
        resp /= resp.sum(axis=1)[:, None]
    else:  # random_from_data
        resp[rs.choice(n, size=k, replace=False), np.arange(k)] = 1
    return resp


# -- the fit ---------------------------------------------------------------------------------------


@dataclass
class MixtureFit:
    """A fitted 1-D mixture: (K,) weights, means, variances and 1/σ, plus EM's trace."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    precisions_cholesky: np.ndarray
    n_iter: int
    lower_bound: float
    lower_bounds: list[float] = field(default_factory=list)
    converged: bool = False


def check_params(k: Any, tol: float, reg_covar: float, max_iter: Any, n_init: Any, init_params: str,
                 sample_size: Any, device: str) -> int:
    checks = [
        (isinstance(k, int | np.integer) and k >= 1, f"n_components must be an int >= 1, got {k!r}"),
        (tol >= 0, f"tol must be >= 0, got {tol!r}"),
        (reg_covar >= 0, f"reg_covar must be >= 0, got {reg_covar!r}"),
        (isinstance(max_iter, int | np.integer) and max_iter >= 0, f"max_iter must be an int >= 0, got {max_iter!r}"),
        (isinstance(n_init, int | np.integer) and n_init >= 1, f"n_init must be an int >= 1, got {n_init!r}"),
        (init_params in INIT_PARAMS, f"init_params must be one of {INIT_PARAMS}, got {init_params!r}"),
        (isinstance(sample_size, int | np.integer) and sample_size >= max(2, k),
         f"sample_size must be an int >= max(2, n_components), got {sample_size!r}"),
        (device in ("cpu", "gpu", "auto"), f"device must be cpu, gpu or auto, got {device!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise GMMInputError(msg)
    return int(k)


def checked_inits(k: int, weights_init: Any, means_init: Any, precisions_init: Any) -> tuple[np.ndarray | None, ...]:
    w = mu = prec = None
    if weights_init is not None:
        w = np.asarray(weights_init, dtype=np.float64).ravel()
        if w.shape != (k,) or np.any(w < 0) or np.any(w > 1) or not abs(1 - w.sum()) <= 1e-8:
            raise GMMInputError(f"weights_init must be {k} values in [0, 1] summing to 1, got {w}")
    if means_init is not None:
        mu = np.asarray(means_init, dtype=np.float64)
        if mu.size != k or mu.ndim > 2 or not np.all(np.isfinite(mu)):
            raise GMMInputError(f"means_init must have shape ({k}, 1), got {mu.shape}")
        mu = mu.ravel()
    if precisions_init is not None:
        prec = np.asarray(precisions_init, dtype=np.float64)
        if prec.size != k or prec.ndim > 3 or not np.all(prec > 0):
            raise GMMInputError(f"precisions_init must be {k} positive values of shape ({k}, 1, 1)")
        prec = prec.ravel()
    return w, mu, prec


def _sample(src: _Source, lengths: list[int], rs: np.random.RandomState, sample_size: int) -> np.ndarray:
    """At most ``sample_size`` values, uniform without replacement over global positions, so the
    same data give the same sample whatever the partitioning."""
    n = sum(lengths)
    m = min(n, int(sample_size))
    rng = np.random.default_rng(rs.randint(0, 2**31 - 1))
    idx = np.arange(n) if m == n else np.sort(rng.choice(n, size=m, replace=False))
    bounds = np.searchsorted(idx, np.cumsum([0, *lengths]))
    offsets = np.cumsum([0, *lengths])
    which = [i for i in range(len(lengths)) if bounds[i + 1] > bounds[i]]
    args = [(idx[bounds[i] : bounds[i + 1]] - offsets[i],) for i in which]
    return np.concatenate(src.map(_take, args, which))


def _check_distinct(src: _Source, summ: list[tuple[Any, ...]], sample: np.ndarray | None, k: int) -> None:
    lo, hi = min(s[3] for s in summ), max(s[4] for s in summ)
    if k == 1 or (k == 2 and lo < hi):
        return
    for cand in (np.concatenate([s[5] for s in summ]), sample):
        if cand is not None and np.unique(cand).shape[0] >= k:
            return
    found = np.unique(np.concatenate(src.map_all(_distinct, k))).shape[0]
    if found < k:
        raise GMMInputError(f"X has {found} distinct value(s), fewer than n_components={k}")


def _initial(sample: np.ndarray | None, inits: tuple[Any, ...], rs: np.random.RandomState, k: int,
             init_params: str, reg_covar: float) -> tuple[np.ndarray, ...]:
    """(weights, means, variances, precisions_cholesky) as sklearn's ``_initialize``."""
    w0, mu0, prec0 = inits
    w, mu, var = w0, mu0, None
    if sample is not None:
        resp = _resp(sample, rs, k, init_params)
        nk = resp.sum(axis=0) + _EPS10
        mu_s = (resp.T @ sample) / nk
        var = np.array([resp[:, j] @ (sample - mu_s[j]) ** 2 for j in range(k)]) / nk + reg_covar
        w = nk / sample.shape[0] if w0 is None else w0
        mu = mu_s if mu0 is None else mu0
    if prec0 is not None:
        pc, var = np.sqrt(prec0), 1.0 / prec0
    elif var is None:
        raise ValueError("no data sample to initialise from: weights_init, means_init and precisions_init "
                         "must all be given")
    else:
        pc = 1.0 / np.sqrt(var)
    return w, mu, var, pc


def _m_step(stats: np.ndarray, c: float, k: int, reg_covar: float) -> tuple[np.ndarray, ...]:
    """sklearn's M-step from centred sums: Σr(x-μ)² = Q - 2dS + d²N with d = μ - c."""
    big_n, s, q = stats[:k], stats[k : 2 * k], stats[2 * k : 3 * k]
    nk = big_n + _EPS10
    d = s / nk
    var = np.maximum((q - 2 * d * s + d * d * big_n) / nk, 0.0) + reg_covar
    if np.any(var <= 0) or not np.all(np.isfinite(var)):
        raise GMMInputError("Fitting the mixture model failed because some components have ill-defined "
                            "empirical covariance (for instance caused by singleton or collapsed samples). "
                            "Try to decrease the number of components, increase reg_covar, or scale the "
                            "input data.")
    return nk / nk.sum(), c + d, var, 1.0 / np.sqrt(var)


def _em(src: _Source, n: int, c: float, params: tuple[np.ndarray, ...], device: str, tol: float,
        max_iter: int, reg_covar: float) -> MixtureFit:
    w, mu, var, pc = params
    if max_iter == 0:
        return MixtureFit(w, mu, var, pc, 0, -np.inf, [], False)
    k = w.shape[0]
    lb, lbs, converged, n_iter = -np.inf, [], False, 0
    while n_iter < max_iter:
        n_iter += 1
        prev = lb
        stats = src.reduce_sum(_part_stats, *kern.kernel_params(w, mu, pc), c, device)
        lb = float(stats[3 * k] / n)
        w, mu, var, pc = _m_step(stats, c, k, reg_covar)
        lbs.append(lb)
        if abs(lb - prev) < tol:
            converged = True
            break
    return MixtureFit(w, mu, var, pc, n_iter, lb, lbs, converged)


def resolve_device(device: str) -> str:
    from cryoframe.backend import get_array_module

    return "cpu" if get_array_module(device) is np else "gpu"


def fit_mixture(X: Any, n_components: int, *, tol: float = 1e-3, reg_covar: float = 1e-6, max_iter: int = 100,
                n_init: int = 1, init_params: str = "k-means++", weights_init: Any = None, means_init: Any = None,
                precisions_init: Any = None, random_state: Any = None, sample_size: int = 100_000,
                device: str = "cpu", host: Callable[[Any], np.ndarray] = _host_array) -> MixtureFit:
    """Fit a K-component 1-D mixture to ``X`` ((n,) / (n, 1) NumPy, dask array or dask column) by EM;
    the best of ``n_init`` starts (highest final lower bound).  Parameters as scikit-learn's."""
    k = check_params(n_components, tol, reg_covar, max_iter, n_init, init_params, sample_size, device)
    inits = checked_inits(k, weights_init, means_init, precisions_init)
    dev = resolve_device(device)
    with _Source(X, dev, host) as src:
        summ = src.map_all(_summary, k)
        lengths = [s[0] for s in summ]
        n, bad = sum(lengths), sum(s[1] for s in summ)
        if bad:
            raise GMMInputError(f"X contains {bad} non-finite value(s) (NaN or ±inf) among {n} values")
        if n < max(2, k):
            raise GMMInputError(f"X has {n} value(s): need at least max(2, n_components={k})")
        c = sum(s[2] for s in summ) / n
        rs = check_random_state(random_state)
        sample = None if all(v is not None for v in inits) else _sample(src, lengths, rs, sample_size)
        _check_distinct(src, summ, sample, k)
        src.to_device()
        best: MixtureFit | None = None
        for _ in range(n_init):
            res = _em(src, n, c, _initial(sample, inits, rs, k, init_params, reg_covar), dev, tol, max_iter,
                      reg_covar)
            if best is None or res.lower_bound > best.lower_bound or best.lower_bound == -np.inf:
                best = res
    assert best is not None
    return best
