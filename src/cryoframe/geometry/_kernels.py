"""Compiled (numba) CPU twins of the trilinear slice kernels of :mod:`cryoframe.geometry.fourier`.

One loop over (image, frequency), no temporaries: ``insert`` adds ``w CTF F`` and ``w CTF^2`` to the
padded half grids, ``extract`` samples a projector grid.  Each kernel is compiled on first use
(cached on disk by numba) and is tested against the vectorised NumPy version, which CuPy also runs.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

__all__ = ["HAVE_NUMBA", "extract", "insert"]

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_jit: dict[str, Any] = {}


def _insert_loop(rot, kx, ky, flat, fre, fim, ctf, wts, dre, dim, wgt):  # noqa: ANN001, ANN202
    n = rot.shape[0]
    m = kx.shape[0]
    size = dre.shape[0]
    hx = dre.shape[2]
    use_ctf = ctf.shape[0] > 0
    for i in range(n):
        wi = wts[i]
        if wi == 0.0:
            continue
        r00 = rot[i, 0, 0]
        r01 = rot[i, 0, 1]
        r10 = rot[i, 1, 0]
        r11 = rot[i, 1, 1]
        r20 = rot[i, 2, 0]
        r21 = rot[i, 2, 1]
        for j in range(m):
            qx = r00 * kx[j] + r01 * ky[j]
            qy = r10 * kx[j] + r11 * ky[j]
            qz = r20 * kx[j] + r21 * ky[j]
            f = flat[j]
            c = ctf[i, f] if use_ctf else 1.0
            vr = fre[i, f] * c * wi
            vi = fim[i, f] * c * wi
            vw = c * c * wi
            if qx < 0:
                qx = -qx
                qy = -qy
                qz = -qz
                vi = -vi
            x0 = int(np.floor(qx))
            y0 = int(np.floor(qy))
            z0 = int(np.floor(qz))
            fx = qx - x0
            fy = qy - y0
            fz = qz - z0
            for dz in range(2):
                wz = fz if dz else 1.0 - fz
                iz = (z0 + dz) % size
                for dy in range(2):
                    wzy = wz * (fy if dy else 1.0 - fy)
                    iy = (y0 + dy) % size
                    for dx in range(2):
                        w = wzy * (fx if dx else 1.0 - fx)
                        ix = min(x0 + dx, hx - 1)
                        dre[iz, iy, ix] += w * vr
                        dim[iz, iy, ix] += w * vi
                        wgt[iz, iy, ix] += w * vw


def _extract_loop(rot, kx, ky, flat, gre, gim, ore, oim):  # noqa: ANN001, ANN202
    n = rot.shape[0]
    m = kx.shape[0]
    size = gre.shape[0]
    hx = gre.shape[2]
    for i in range(n):
        r00 = rot[i, 0, 0]
        r01 = rot[i, 0, 1]
        r10 = rot[i, 1, 0]
        r11 = rot[i, 1, 1]
        r20 = rot[i, 2, 0]
        r21 = rot[i, 2, 1]
        for j in range(m):
            qx = r00 * kx[j] + r01 * ky[j]
            qy = r10 * kx[j] + r11 * ky[j]
            qz = r20 * kx[j] + r21 * ky[j]
            conj = qx < 0
            if conj:
                qx = -qx
                qy = -qy
                qz = -qz
            x0 = int(np.floor(qx))
            y0 = int(np.floor(qy))
            z0 = int(np.floor(qz))
            fx = qx - x0
            fy = qy - y0
            fz = qz - z0
            ar = 0.0
            ai = 0.0
            for dz in range(2):
                wz = fz if dz else 1.0 - fz
                iz = (z0 + dz) % size
                for dy in range(2):
                    wzy = wz * (fy if dy else 1.0 - fy)
                    iy = (y0 + dy) % size
                    for dx in range(2):
                        w = wzy * (fx if dx else 1.0 - fx)
                        ix = min(x0 + dx, hx - 1)
                        ar += w * gre[iz, iy, ix]
                        ai += w * gim[iz, iy, ix]
            f = flat[j]
            ore[i, f] = ar
            oim[i, f] = -ai if conj else ai


def _get(name: str, fn: Any) -> Any:
    if name not in _jit:
        import numba

        _jit[name] = numba.njit(cache=True, nogil=True, fastmath=False)(fn)
    return _jit[name]


def insert(dre: np.ndarray, dim: np.ndarray, wgt: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray,
           flat: np.ndarray, fimg: np.ndarray, ctf: np.ndarray | None, wts: np.ndarray) -> None:
    """Trilinear insertion into float64 grids ``dre``/``dim``/``wgt`` (P, P, P // 2 + 1) in place.

    ``rot`` (n, 3, 3) pose matrices already multiplied by the padding factor; ``kx``/``ky``/``flat``
    from :func:`cryoframe.geometry.fourier.image_freqs`; ``fimg`` (n, b, b // 2 + 1) complex;
    ``ctf`` the same shape real or None; ``wts`` (n,) float64.
    """
    n = fimg.shape[0]
    f = fimg.reshape(n, -1)
    c = np.zeros((0, 1), np.float32) if ctf is None else np.ascontiguousarray(ctf.reshape(n, -1), dtype=np.float32)
    _get("insert", _insert_loop)(np.ascontiguousarray(rot, dtype=np.float64), kx, ky, flat,
                                 np.ascontiguousarray(f.real, dtype=np.float32),
                                 np.ascontiguousarray(f.imag, dtype=np.float32), c,
                                 np.ascontiguousarray(wts, dtype=np.float64), dre, dim, wgt)


def extract(gre: np.ndarray, gim: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray, flat: np.ndarray,
            box: int) -> np.ndarray:
    """Trilinear slices (n, box, box // 2 + 1) complex64 of the projector grid (real and imaginary
    parts ``gre``/``gim``); ``rot`` already multiplied by the padding factor."""
    n = rot.shape[0]
    ore = np.zeros((n, box * (box // 2 + 1)), np.float32)
    oim = np.zeros_like(ore)
    _get("extract", _extract_loop)(np.ascontiguousarray(rot, dtype=np.float64), kx, ky, flat, gre, gim, ore, oim)
    return (ore + 1j * oim).astype(np.complex64).reshape(n, box, box // 2 + 1)
