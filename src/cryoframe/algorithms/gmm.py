"""A scikit-learn-compatible 1-D Gaussian mixture fitted by distributed EM.

The data (one value per particle, in whatever unit the column carries: Å, px, a score...) stay
where they are: a NumPy array is cut into chunks processed by a thread pool, a dask array or
dask dataframe column keeps its own partitions and is computed by whatever scheduler
``dask.compute`` picks up (a ``distributed.Client``, ``dask.config.set(scheduler=...)``).
Every EM iteration is ONE pass over the partitions: each partition runs a fused kernel (E-step
for the current parameters + float64 sufficient statistics, see ``_gmm_kernels``), dask
tree-reduces the (3K+1,) vectors and the M-step runs on the driver with scikit-learn's
formulas.  Started from the same parameters, the fit follows scikit-learn's
``GaussianMixture(covariance_type="full")`` iteration by iteration.

Dask inputs are recomputed from their graph at every pass; ``persist()`` them first when
loading is expensive and the data fit in (cluster) memory.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from cryoframe.algorithms import _gmm_kernels as kern
from cryoframe.errors import InputError

__all__ = ["GMMInputError", "GaussianMixture"]


class GMMInputError(InputError, ValueError):
    """Bad parameters or data: an :class:`InputError` (the CLI prints one line) that is also the
    ``ValueError`` scikit-learn's estimator conventions expect."""

_INIT_PARAMS = ("k-means++", "kmeans", "random", "random_from_data")
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


def _is_dask_array(X: Any) -> bool:
    import dask

    if not dask.is_dask_collection(X):
        return False
    import dask.array as da

    return isinstance(X, da.Array)


def _is_dask_frame(X: Any) -> bool:
    import dask

    if not dask.is_dask_collection(X):
        return False
    import dask.dataframe as dd

    return isinstance(X, dd.DataFrame | dd.Series)


def _host_array(X: Any) -> np.ndarray:
    if hasattr(X, "iloc"):
        if X.ndim == 2 and X.shape[1] != 1:
            raise GMMInputError(f"X must have one column (a 1-D feature), got {X.shape[1]}")
        return _as_1d(X)
    from sklearn.utils import check_array

    try:  # sparse, complex, empty, object and ragged input: scikit-learn's checks and messages
        x = check_array(X, ensure_2d=False, allow_nd=True, dtype=[np.float64, np.float32],
                        ensure_all_finite=False, ensure_min_samples=1, ensure_min_features=1)
    except (TypeError, ValueError) as exc:
        raise GMMInputError(str(exc)) from exc
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise GMMInputError(f"X contains {bad} non-finite value(s) (NaN or ±inf) among {x.size} values")
    if x.ndim > 2 or (x.ndim == 2 and x.shape[1] != 1) or x.ndim == 0:
        raise GMMInputError(f"X must have shape (n,) or (n, 1), got {x.shape}")
    x = x.ravel()
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


class _Source:
    """Partitions of the input: NumPy chunks (thread pool) or dask delayed parts (dask.compute)."""

    def __init__(self, X: Any, device: str) -> None:
        self.device = device
        self.pool: ThreadPoolExecutor | None = None
        if _is_dask_array(X):
            if X.ndim not in (1, 2) or (X.ndim == 2 and X.shape[1] != 1):
                raise GMMInputError(f"X must have shape (n,) or (n, 1), got {X.shape}")
            self.lazy, self.parts = True, list(X.to_delayed().ravel())
        elif _is_dask_frame(X):
            if X.ndim == 2 and len(X.columns) != 1:
                raise GMMInputError(f"X must have one column (a 1-D feature), got {len(X.columns)}")
            self.lazy, self.parts = True, list(X.to_delayed())
        else:
            x = _host_array(X)
            ncpu = os.cpu_count() or 1
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


# -- the estimator ---------------------------------------------------------------------------------


class GaussianMixture(DensityMixin, BaseEstimator):
    """1-D Gaussian mixture (scikit-learn API, ``covariance_type="full"`` shapes), distributed EM.

    Parameters mirror :class:`sklearn.mixture.GaussianMixture`; units of means/variances are
    those of the data (variance in unit²).  Extra parameters: ``sample_size`` is the largest
    number of values drawn (reproducibly, uniformly without replacement) for the k-means++
    initialisation; ``device`` is ``"cpu"``, ``"gpu"`` or ``"auto"``.  ``init_params``:
    ``"k-means++"`` (k-means++ seeds refined by Lloyd iterations on the sample, the default),
    ``"kmeans"``, ``"random"`` or ``"random_from_data"`` (scikit-learn's, run on the sample).

    Learned attributes: ``weights_`` (K,), ``means_`` (K, 1), ``covariances_`` (K, 1, 1),
    ``precisions_`` and ``precisions_cholesky_`` (K, 1, 1), ``converged_``, ``n_iter_``,
    ``lower_bound_`` (mean natural-log likelihood per sample of the last E-step, as sklearn),
    ``lower_bounds_``, ``n_features_in_ = 1``.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "k-means++",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        sample_size: int = 100_000,
        device: str = "cpu",
    ) -> None:
        self.n_components = n_components
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.sample_size = sample_size
        self.device = device

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        """Estimate the mixture by EM; ``X`` is (n,) / (n, 1) NumPy, dask array or dask column."""
        k = self._check_params()
        inits = self._checked_inits(k)
        device = self._resolve_device()
        with _Source(X, device) as src:
            summ = src.map_all(_summary, k)
            lengths = [s[0] for s in summ]
            n, bad = sum(lengths), sum(s[1] for s in summ)
            if bad:
                raise GMMInputError(f"X contains {bad} non-finite value(s) (NaN or ±inf) among {n} values")
            if n < max(2, k):
                raise GMMInputError(f"X has {n} value(s): need at least max(2, n_components={k})")
            c = sum(s[2] for s in summ) / n
            rs = check_random_state(self.random_state)
            sample = None if all(v is not None for v in inits) else self._sample(src, lengths, rs)
            self._check_distinct(src, summ, sample, k)
            src.to_device()
            best: tuple[Any, ...] | None = None
            for _ in range(self.n_init):
                res = self._em(src, n, c, self._initial(sample, inits, rs, k), device)
                if best is None or res[2] > best[2] or best[2] == -np.inf:
                    best = res
        assert best is not None
        (w, mu, var, pc), n_iter, lb, lbs, converged = best
        if not converged and self.max_iter > 0:
            warnings.warn("Best performing initialization did not converge. Try different init "
                          "parameters, or increase max_iter, tol, or check for degenerate data.",
                          ConvergenceWarning, stacklevel=2)
        self._set(w, mu, var, pc)
        self.converged_, self.n_iter_, self.lower_bound_, self.lower_bounds_ = converged, n_iter, lb, lbs
        self.n_features_in_ = 1
        return self

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit, then return the component label (int) of every value of ``X``."""
        return self.fit(X).predict(X)

    def _check_params(self) -> int:
        k = self.n_components
        checks = [
            (isinstance(k, int | np.integer) and k >= 1, f"n_components must be an int >= 1, got {k!r}"),
            (self.tol >= 0, f"tol must be >= 0, got {self.tol!r}"),
            (self.reg_covar >= 0, f"reg_covar must be >= 0, got {self.reg_covar!r}"),
            (isinstance(self.max_iter, int | np.integer) and self.max_iter >= 0,
             f"max_iter must be an int >= 0, got {self.max_iter!r}"),
            (isinstance(self.n_init, int | np.integer) and self.n_init >= 1,
             f"n_init must be an int >= 1, got {self.n_init!r}"),
            (self.init_params in _INIT_PARAMS, f"init_params must be one of {_INIT_PARAMS}, got {self.init_params!r}"),
            (isinstance(self.sample_size, int | np.integer) and self.sample_size >= max(2, k),
             f"sample_size must be an int >= max(2, n_components), got {self.sample_size!r}"),
            (self.device in ("cpu", "gpu", "auto"), f"device must be cpu, gpu or auto, got {self.device!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise GMMInputError(msg)
        return int(k)

    def _resolve_device(self) -> str:
        from cryoframe.backend import get_array_module

        return "cpu" if get_array_module(self.device) is np else "gpu"

    def _checked_inits(self, k: int) -> tuple[np.ndarray | None, ...]:
        w = mu = prec = None
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64).ravel()
            if w.shape != (k,) or np.any(w < 0) or np.any(w > 1) or not abs(1 - w.sum()) <= 1e-8:
                raise GMMInputError(f"weights_init must be {k} values in [0, 1] summing to 1, got {w}")
        if self.means_init is not None:
            mu = np.asarray(self.means_init, dtype=np.float64)
            if mu.size != k or mu.ndim > 2 or not np.all(np.isfinite(mu)):
                raise GMMInputError(f"means_init must have shape ({k}, 1), got {mu.shape}")
            mu = mu.ravel()
        if self.precisions_init is not None:
            prec = np.asarray(self.precisions_init, dtype=np.float64)
            if prec.size != k or prec.ndim > 3 or not np.all(prec > 0):
                raise GMMInputError(f"precisions_init must be {k} positive values of shape ({k}, 1, 1)")
            prec = prec.ravel()
        return w, mu, prec

    def _sample(self, src: _Source, lengths: list[int], rs: np.random.RandomState) -> np.ndarray:
        """At most ``sample_size`` values, uniform without replacement over global positions, so
        the same data give the same sample whatever the partitioning."""
        n = sum(lengths)
        m = min(n, int(self.sample_size))
        rng = np.random.default_rng(rs.randint(0, 2**31 - 1))
        idx = np.arange(n) if m == n else np.sort(rng.choice(n, size=m, replace=False))
        bounds = np.searchsorted(idx, np.cumsum([0, *lengths]))
        offsets = np.cumsum([0, *lengths])
        which = [i for i in range(len(lengths)) if bounds[i + 1] > bounds[i]]
        args = [(idx[bounds[i] : bounds[i + 1]] - offsets[i],) for i in which]
        return np.concatenate(src.map(_take, args, which))

    def _check_distinct(self, src: _Source, summ: list[tuple[Any, ...]], sample: np.ndarray | None, k: int) -> None:
        lo, hi = min(s[3] for s in summ), max(s[4] for s in summ)
        if k == 1 or (k == 2 and lo < hi):
            return
        for cand in (np.concatenate([s[5] for s in summ]), sample):
            if cand is not None and np.unique(cand).shape[0] >= k:
                return
        found = np.unique(np.concatenate(src.map_all(_distinct, k))).shape[0]
        if found < k:
            raise GMMInputError(f"X has {found} distinct value(s), fewer than n_components={k}")

    def _initial(self, sample: np.ndarray | None, inits: tuple[Any, ...], rs: np.random.RandomState,
                 k: int) -> tuple[np.ndarray, ...]:
        """(weights, means, variances, precisions_cholesky) as sklearn's ``_initialize``."""
        w0, mu0, prec0 = inits
        w, mu, var = w0, mu0, None
        if sample is not None:
            resp = self._resp(sample, rs, k)
            nk = resp.sum(axis=0) + _EPS10
            mu_s = (resp.T @ sample) / nk
            var = np.array([resp[:, j] @ (sample - mu_s[j]) ** 2 for j in range(k)]) / nk + self.reg_covar
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

    def _resp(self, xs: np.ndarray, rs: np.random.RandomState, k: int) -> np.ndarray:
        from sklearn.cluster import KMeans, kmeans_plusplus

        n = xs.shape[0]
        resp = np.zeros((n, k))
        X2 = xs[:, None]
        if self.init_params == "k-means++":
            centres, _ = kmeans_plusplus(X2, k, random_state=rs)
            labels = KMeans(k, init=centres, n_init=1, random_state=rs).fit(X2).labels_
        elif self.init_params == "kmeans":
            labels = KMeans(k, n_init=1, random_state=rs).fit(X2).labels_
        elif self.init_params == "random":
            resp = rs.uniform(size=(n, k))
            return resp / resp.sum(axis=1)[:, None]
        else:  # random_from_data
            resp[rs.choice(n, size=k, replace=False), np.arange(k)] = 1
            return resp
        resp[np.arange(n), labels] = 1
        return resp

    def _em(self, src: _Source, n: int, c: float, params: tuple[np.ndarray, ...], device: str) -> tuple[Any, ...]:
        """EM from ``params``; returns (params, n_iter, lower_bound, lower_bounds, converged)."""
        if self.max_iter == 0:
            return params, 0, -np.inf, [], False
        w, mu, var, pc = params
        k = w.shape[0]
        lb, lbs, converged, n_iter = -np.inf, [], False, 0
        while n_iter < self.max_iter:
            n_iter += 1
            prev = lb
            stats = src.reduce_sum(_part_stats, *kern.kernel_params(w, mu, pc), c, device)
            lb = float(stats[3 * k] / n)
            w, mu, var, pc = self._m_step(stats, c, k)
            lbs.append(lb)
            if abs(lb - prev) < self.tol:
                converged = True
                break
        return (w, mu, var, pc), n_iter, lb, lbs, converged

    def _m_step(self, stats: np.ndarray, c: float, k: int) -> tuple[np.ndarray, ...]:
        """sklearn's M-step from centred sums: Σr(x-μ)² = Q - 2dS + d²N with d = μ - c."""
        big_n, s, q = stats[:k], stats[k : 2 * k], stats[2 * k : 3 * k]
        nk = big_n + _EPS10
        d = s / nk
        var = np.maximum((q - 2 * d * s + d * d * big_n) / nk, 0.0) + self.reg_covar
        if np.any(var <= 0) or not np.all(np.isfinite(var)):
            raise GMMInputError("Fitting the mixture model failed because some components have ill-defined "
                             "empirical covariance (for instance caused by singleton or collapsed samples). "
                             "Try to decrease the number of components, increase reg_covar, or scale the "
                             "input data.")
        return nk / nk.sum(), c + d, var, 1.0 / np.sqrt(var)

    def _set(self, w: np.ndarray, mu: np.ndarray, var: np.ndarray, pc: np.ndarray) -> None:
        k = w.shape[0]
        self.weights_ = np.asarray(w, dtype=np.float64)
        self.means_ = np.asarray(mu, dtype=np.float64).reshape(k, 1)
        self.covariances_ = np.asarray(var, dtype=np.float64).reshape(k, 1, 1)
        self.precisions_cholesky_ = np.asarray(pc, dtype=np.float64).reshape(k, 1, 1)
        self.precisions_ = self.precisions_cholesky_**2

    # -- prediction ------------------------------------------------------------------------------

    def _apply(self, X: Any, what: str) -> Any:
        check_is_fitted(self)
        cst, pc, mpc = kern.kernel_params(self.weights_, self.means_, self.precisions_cholesky_)
        k = cst.shape[0]
        if _is_dask_array(X):
            if X.ndim not in (1, 2) or (X.ndim == 2 and X.shape[1] != 1):
                raise GMMInputError(f"X must have shape (n,) or (n, 1), got {X.shape}")
            kw: dict[str, Any] = {"dtype": np.int64 if what == "label" else np.float64}
            if what == "proba":
                kw["chunks"] = (X.chunks[0], (k,))
                if X.ndim == 1:
                    kw["new_axis"] = 1
            elif X.ndim == 2:
                kw["drop_axis"] = 1
            return X.map_blocks(kern.predict_block, cst, pc, mpc, what, **kw)
        if _is_dask_frame(X):
            import pandas as pd

            if X.ndim == 2 and len(X.columns) != 1:
                raise GMMInputError(f"X must have one column (a 1-D feature), got {len(X.columns)}")
            meta = (pd.DataFrame({j: pd.Series(dtype="float64") for j in range(k)}) if what == "proba"
                    else pd.Series(dtype="int64" if what == "label" else "float64", name=what))
            return X.map_partitions(_predict_frame, cst, pc, mpc, what, meta=meta)
        return kern.predict_block(_host_array(X), cst, pc, mpc, what)

    def predict(self, X: Any) -> Any:
        """Most probable component (int64) per value; lazy (dask array / Series) for dask input."""
        return self._apply(X, "label")

    def predict_proba(self, X: Any) -> Any:
        """Posterior probability of each component per value, shape (n, K); rows sum to 1."""
        return self._apply(X, "proba")

    def score_samples(self, X: Any) -> Any:
        """Natural-log likelihood of each value under the mixture, shape (n,) (log of a density,
        i.e. per unit of the data)."""
        return self._apply(X, "score")

    def _loglik_sum(self, X: Any) -> tuple[float, int]:
        ss = self.score_samples(X)
        if hasattr(ss, "compute"):
            import dask

            total, n = dask.compute(ss.sum(), ss.shape[0] if _is_dask_array(ss) else ss.size)
            return float(total), int(n)
        return float(ss.sum()), int(ss.shape[0])

    def score(self, X: Any, y: Any = None) -> float:
        """Mean per-sample log-likelihood of ``X`` (computed eagerly for dask input)."""
        total, n = self._loglik_sum(X)
        return total / n

    def _n_parameters(self) -> int:
        return 3 * int(self.weights_.shape[0]) - 1

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        total, n = self._loglik_sum(X)
        return -2 * total + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        total, _ = self._loglik_sum(X)
        return -2 * total + 2 * self._n_parameters()
