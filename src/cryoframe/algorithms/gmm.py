"""A scikit-learn-compatible 1-D Gaussian mixture fitted by distributed EM.

The fit itself lives in :mod:`cryoframe.algorithms.gmm_em` (no scikit-learn import, so jobs that
only need the fit do not pay for it); this module is its estimator face: parameters stored
verbatim, scikit-learn's input checks and warnings, ``predict``/``predict_proba``/``score``/
``bic``/``aic`` on NumPy, dask arrays and dask dataframe columns.  Started from the same
parameters, the fit follows scikit-learn's ``GaussianMixture(covariance_type="full")`` iteration
by iteration.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from cryoframe.algorithms import _gmm_kernels as kern
from cryoframe.algorithms.gmm_em import (
    GMMInputError,
    MixtureFit,
    _host_array,
    _predict_frame,
    fit_mixture,
    is_dask_array,
    is_dask_frame,
)

__all__ = ["GMMInputError", "GaussianMixture"]


def _checked_host_array(X: Any) -> np.ndarray:
    """Host input through scikit-learn's ``check_array`` (its messages for sparse, complex, ragged...)."""
    if hasattr(X, "iloc"):
        if X.ndim == 2 and X.shape[1] != 1:
            raise GMMInputError(f"X must have one column (a 1-D feature), got {X.shape[1]}")
        return _host_array(X)
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
        res = fit_mixture(X, self.n_components, tol=self.tol, reg_covar=self.reg_covar, max_iter=self.max_iter,
                          n_init=self.n_init, init_params=self.init_params, weights_init=self.weights_init,
                          means_init=self.means_init, precisions_init=self.precisions_init,
                          random_state=self.random_state, sample_size=self.sample_size, device=self.device,
                          host=_checked_host_array)
        if not res.converged and self.max_iter > 0:
            warnings.warn("Best performing initialization did not converge. Try different init "
                          "parameters, or increase max_iter, tol, or check for degenerate data.",
                          ConvergenceWarning, stacklevel=2)
        fitted = self.from_fit(res)
        for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_", "converged_",
                     "n_iter_", "lower_bound_", "lower_bounds_", "n_features_in_"):
            setattr(self, attr, getattr(fitted, attr))
        return self

    @classmethod
    def from_fit(cls, res: MixtureFit, **params: Any) -> GaussianMixture:
        """A fitted estimator from :func:`~cryoframe.algorithms.gmm_em.fit_mixture`'s result."""
        gm = cls(n_components=int(res.weights.shape[0]), **params)
        gm._set(res.weights, res.means, res.variances, res.precisions_cholesky)
        gm.converged_, gm.n_iter_, gm.lower_bound_, gm.lower_bounds_ = res.converged, res.n_iter, res.lower_bound, \
            res.lower_bounds
        gm.n_features_in_ = 1
        return gm

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit, then return the component label (int) of every value of ``X``."""
        return self.fit(X).predict(X)

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
        if is_dask_array(X):
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
        if is_dask_frame(X):
            import pandas as pd

            if X.ndim == 2 and len(X.columns) != 1:
                raise GMMInputError(f"X must have one column (a 1-D feature), got {len(X.columns)}")
            meta = (pd.DataFrame({j: pd.Series(dtype="float64") for j in range(k)}) if what == "proba"
                    else pd.Series(dtype="int64" if what == "label" else "float64", name=what))
            return X.map_partitions(_predict_frame, cst, pc, mpc, what, meta=meta)
        return kern.predict_block(_checked_host_array(X), cst, pc, mpc, what)

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

            total, n = dask.compute(ss.sum(), ss.shape[0] if is_dask_array(ss) else ss.size)
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
