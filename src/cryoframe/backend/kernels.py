"""Fused GPU kernels (CuPy).  Besides ``backend/__init__``, the only module that touches cupy.

cupy is imported lazily inside the functions, so importing this module is free and works
without a GPU.  Each kernel has a NumPy twin elsewhere (named in its docstring) and a test
comparing the two.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoframe.errors import CryoframeError

__all__ = ["gmm_stats", "GMM_MAX_COMPONENTS"]

GMM_MAX_COMPONENTS = 32
_BLOCK = 256

_GMM_SRC = r"""
__device__ __forceinline__ float  gexp(float v)  { return expf(v); }
__device__ __forceinline__ double gexp(double v) { return exp(v); }

template <typename T, int K>
__global__ void gmm_stats(const T* __restrict__ x, const long long n,
                          const T* __restrict__ cst, const T* __restrict__ pc,
                          const T* __restrict__ mpc, const double c,
                          double* __restrict__ partial)
{
    const int NS = 3 * K + 1;
    double acc[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) acc[j] = 0.0;
    T lp[K];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T xi = x[i];
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const T y = xi * pc[k] - mpc[k];
            lp[k] = cst[k] - (T)0.5 * y * y;
        }
        T m = lp[0];
#pragma unroll
        for (int k = 1; k < K; ++k) m = lp[k] > m ? lp[k] : m;
        T tot = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const T e = gexp(lp[k] - m);
            lp[k] = e;
            tot += e;
        }
        const T inv = (T)1 / tot;
        const double d = (double)xi - c;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const double r = (double)(lp[k] * inv);
            const double rd = r * d;
            acc[k] += r;
            acc[K + k] += rd;
            acc[2 * K + k] += rd * d;
        }
        acc[3 * K] += (double)m + log((double)tot);
    }
    // deterministic block reduction: warp shuffles, then one warp over the warp sums
    __shared__ double sh[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int j = 0; j < NS; ++j) {
        double v = acc[j];
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        if (lane == 0) sh[warp] = v;
        __syncthreads();
        if (warp == 0) {
            v = lane < nwarps ? sh[lane] : 0.0;
            for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
            if (lane == 0) partial[(long long)blockIdx.x * NS + j] = v;
        }
        __syncthreads();
    }
}
"""

_kernels: dict[tuple[str, int, int], Any] = {}


def _gmm_kernel(cp: Any, ctype: str, k: int) -> Any:
    dev = cp.cuda.runtime.getDevice()
    key = (ctype, k, dev)
    if key not in _kernels:
        name = f"gmm_stats<{ctype},{k}>"
        mod = cp.RawModule(code=_GMM_SRC, options=("--std=c++14",), name_expressions=[name])
        _kernels[key] = mod.get_function(name)
    return _kernels[key]


def gmm_stats(x: Any, cst: np.ndarray, pc: np.ndarray, mpc: np.ndarray, c: float) -> np.ndarray:
    """Fused 1-D GMM E-step + sufficient statistics on the GPU, returned as a host float64 (3K+1,).

    ``x`` is a 1-D host or device array (float32 is computed in float32, anything else in
    float64; sums always accumulate in float64).  It is moved to the device once.  ``cst, pc,
    mpc`` and ``c`` are as in :mod:`cryoframe.algorithms._gmm_kernels`, whose
    ``stats_numpy`` is this kernel's twin.  Per-block partial sums are added on the host in a
    fixed order, so repeated calls give bitwise identical results.
    """
    from cryoframe.backend import get_array_module, to_device

    cp = get_array_module("gpu")
    k = int(np.asarray(cst).shape[0])
    if not 1 <= k <= GMM_MAX_COMPONENTS:
        raise CryoframeError(f"the GPU GMM kernel supports 1..{GMM_MAX_COMPONENTS} components, got {k}")
    xd = to_device(x, cp).ravel()
    if xd.dtype == cp.float32:
        dtype, ctype = cp.float32, "float"
    else:
        dtype, ctype = cp.float64, "double"
    xd = cp.ascontiguousarray(xd, dtype=dtype)
    n = int(xd.shape[0])
    ns = 3 * k + 1
    if n == 0:
        return np.zeros(ns, dtype=np.float64)
    params = [cp.asarray(np.asarray(a, dtype=np.float64), dtype=dtype) for a in (cst, pc, mpc)]
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    grid = int(min((n + _BLOCK - 1) // _BLOCK, 8 * sms))
    partial = cp.empty((grid, ns), dtype=cp.float64)
    kern = _gmm_kernel(cp, ctype, k)
    kern((grid,), (_BLOCK,), (xd, np.int64(n), *params, np.float64(c), partial))
    return cp.asnumpy(partial).sum(axis=0)
