"""Estimators (scikit-learn style: ``fit`` returns self, learned state ends in ``_``), built as
Dask graphs over partitions with NumPy/numba kernels on CPU and fused CuPy kernels on GPU."""

from typing import Any

__all__ = ["GaussianMixture"]


def __getattr__(name: str) -> Any:  # lazy: importing one estimator's module does not import scikit-learn
    if name == "GaussianMixture":
        from cryoframe.algorithms.gmm import GaussianMixture

        return GaussianMixture
    raise AttributeError(name)
