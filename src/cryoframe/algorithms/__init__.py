"""Estimators (scikit-learn style: ``fit`` returns self, learned state ends in ``_``), built as
Dask graphs over partitions with NumPy/numba kernels on CPU and fused CuPy kernels on GPU."""

from cryoframe.algorithms.gmm import GaussianMixture

__all__ = ["GaussianMixture"]
