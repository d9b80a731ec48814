"""Compiled (numba) CPU twins of the trilinear slice kernels of :mod:`cryoframe.geometry.fourier`.

One loop over (image, frequency), no temporaries: ``insert`` adds ``w CTF F`` and ``w CTF^2`` to the
padded half-grid sums (one interleaved (P, P, P // 2 + 1, 3) array, so a trilinear corner touches one
cache line), ``extract`` samples a projector grid; ``extremes`` serves the pose search's level 0.  Each kernel is compiled on first use
(cached on disk by numba) and is tested against the vectorised NumPy version, which CuPy also runs.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

__all__ = ["HAVE_NUMBA", "extract", "extremes", "extremes_pairs", "insert", "insert_ctf", "insert_ctf_params", "preload", "run_insert_ctf", "warm"]

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_jit: dict[str, Any] = {}


def _wrap(i, size):  # noqa: ANN001, ANN202
    """Grid index ``i`` (one step outside at most) wrapped into ``[0, size)``."""
    if i < 0:
        return i + size
    if i >= size:
        return i - size
    return i


def _corner(qx, qy, qz):  # noqa: ANN001, ANN202
    """The lower trilinear corner of grid point ``q`` on the half grid and the fractions past it, after
    moving a point with ``qx < 0`` to its Friedel mate ``-q`` (``conj``: the value there is conjugated)."""
    conj = qx < 0
    if conj:
        qx = -qx
        qy = -qy
        qz = -qz
    x0 = int(np.floor(qx))
    y0 = int(np.floor(qy))
    z0 = int(np.floor(qz))
    return x0, y0, z0, qx - x0, qy - y0, qz - z0, conj


def _scatter(acc, qx, qy, qz, vr, vi, vw):  # noqa: ANN001, ANN202
    """Add ``(vr, vi, vw)`` at the grid point ``q`` to the 8 trilinear corners of the half-grid sums ``acc``
    (a point with ``qx < 0`` goes to its Friedel mate ``-q``, the imaginary part negated)."""
    size = acc.shape[0]
    hx = acc.shape[2]
    x0, y0, z0, fx, fy, fz, conj = _corner(qx, qy, qz)
    if conj:
        vi = -vi
    for dz in range(2):
        wz = fz if dz else 1.0 - fz
        iz = _wrap(z0 + dz, size)
        for dy in range(2):
            wzy = wz * (fy if dy else 1.0 - fy)
            iy = _wrap(y0 + dy, size)
            for dx in range(2):
                w = wzy * (fx if dx else 1.0 - fx)
                ix = min(x0 + dx, hx - 1)
                acc[iz, iy, ix, 0] += w * vr
                acc[iz, iy, ix, 1] += w * vi
                acc[iz, iy, ix, 2] += w * vw


def _insert_loop(rot, kx, ky, flat, fre, fim, ctf, wts, acc):  # noqa: ANN001, ANN202
    n = rot.shape[0]
    m = kx.shape[0]
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
            _scatter(acc, qx, qy, qz, vr, vi, vw)


def _insert_ctf_loop(rot, kx, ky, flat, s2, c2a, s2a, fre, fim, par, acc, jx, jy, vx, vy):  # noqa: ANN001, ANN202
    # par[i] = (df_mean, df_half_diff, cos 2 angle, sin 2 angle, pi lambda, pi/2 Cs lambda^3,
    #           phase shift + arcsin(A), weight, shift x / box, shift y / box, use_ctf)
    # The shift's phase exp(-2 pi i (kx sx + ky sy)) is separable: per image, exp(-2 pi i v sx) for the
    # distinct kx values vx and exp(-2 pi i v sy) for the distinct ky values vy, then one complex product
    # per frequency (jx/jy: each frequency's index in vx/vy) instead of a cos and a sin.
    n = rot.shape[0]
    m = kx.shape[0]
    twopi = 2.0 * np.pi
    exr = np.empty(vx.shape[0])
    exi = np.empty(vx.shape[0])
    eyr = np.empty(vy.shape[0])
    eyi = np.empty(vy.shape[0])
    for i in range(n):
        wi = par[i, 7]
        if wi == 0.0:
            continue
        dm = par[i, 0]
        dd = par[i, 1]
        ca = par[i, 2]
        sa = par[i, 3]
        pl = par[i, 4]
        pc = par[i, 5]
        p0 = par[i, 6]
        sx = par[i, 8]
        sy = par[i, 9]
        use_ctf = par[i, 10] > 0
        r00 = rot[i, 0, 0]
        r01 = rot[i, 0, 1]
        r10 = rot[i, 1, 0]
        r11 = rot[i, 1, 1]
        r20 = rot[i, 2, 0]
        r21 = rot[i, 2, 1]
        for t in range(vx.shape[0]):
            exr[t] = np.cos(twopi * vx[t] * sx)
            exi[t] = -np.sin(twopi * vx[t] * sx)
        for t in range(vy.shape[0]):
            eyr[t] = np.cos(twopi * vy[t] * sy)
            eyi[t] = -np.sin(twopi * vy[t] * sy)
        for j in range(m):
            f = flat[j]
            c = 1.0
            if use_ctf:
                d = dm + dd * (c2a[j] * ca + s2a[j] * sa)
                c = np.sin(pl * d * s2[j] - pc * s2[j] * s2[j] + p0)
            a = jx[j]
            b = jy[j]
            cp = exr[a] * eyr[b] - exi[a] * eyi[b]
            sp = exr[a] * eyi[b] + exi[a] * eyr[b]
            ar = fre[i, f]
            ai = fim[i, f]
            vr = (ar * cp - ai * sp) * c * wi
            vi = (ar * sp + ai * cp) * c * wi
            vw = c * c * wi
            qx = r00 * kx[j] + r01 * ky[j]
            qy = r10 * kx[j] + r11 * ky[j]
            qz = r20 * kx[j] + r21 * ky[j]
            _scatter(acc, qx, qy, qz, vr, vi, vw)


def _extract_loop(rot, kx, ky, gre, gim, out):  # noqa: ANN001, ANN202
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
            x0, y0, z0, fx, fy, fz, conj = _corner(qx, qy, qz)
            ar = 0.0
            ai = 0.0
            for dz in range(2):
                wz = fz if dz else 1.0 - fz
                iz = _wrap(z0 + dz, size)
                for dy in range(2):
                    wzy = wz * (fy if dy else 1.0 - fy)
                    iy = _wrap(y0 + dy, size)
                    for dx in range(2):
                        w = wzy * (fx if dx else 1.0 - fx)
                        ix = min(x0 + dx, hx - 1)
                        ar += w * gre[iz, iy, ix]
                        ai += w * gim[iz, iy, ix]
            out[i, j] = complex(ar, -ai if conj else ai)


def _extremes_loop(t, mx, mn):  # noqa: ANN001, ANN202
    nb, S, R = t.shape
    for i in range(nb):
        hi = mx[i]
        lo = mn[i]
        hi[:] = t[i, 0]
        lo[:] = t[i, 0]
        for s in range(1, S):
            row = t[i, s]
            for r in range(R):  # selects on 1-D rows: LLVM vectorises this loop (not the 3-D if-form)
                v = row[r]
                h = hi[r]
                lo_r = lo[r]
                hi[r] = v if v > h else h
                lo[r] = v if v < lo_r else lo_r


def _extremes_pairs_loop(u, v, hi, lo):  # noqa: ANN001, ANN202
    nb, S, n = u.shape
    t = np.empty((2, n), u.dtype)
    ta = t[0]
    tb = t[1]
    for i in range(nb):
        for s in range(S):
            ur = u[i, s]
            vr = v[i, s]
            # at most four arrays a loop: with all six in one loop LLVM's runtime alias checks were too
            # many to vectorise it (scalar maxss; 1.6x the time of these loops, AMD EPYC, ad hoc)
            for j in range(n):
                ta[j] = ur[j] + vr[j]
                tb[j] = ur[j] - vr[j]
            for q in range(2):
                row = t[q]
                h = hi[i, q]
                lw = lo[i, q]
                if s == 0:
                    h[:] = row
                    lw[:] = row
                    continue
                for j in range(n):
                    x = row[j]
                    a = h[j]
                    b = lw[j]
                    h[j] = x if x > a else a
                    lw[j] = x if x < b else b


def extremes_pairs(u: np.ndarray, v: np.ndarray,
                   out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`extremes` of ``t = [u + v, u - v]`` without forming it: ``u``, ``v`` (nb, S, nd, h) float32
    give the largest and the smallest of ``t`` (nb, S, nd, 2, h) over S, (nb, nd, 2, h) each (the sums
    and differences rounded as ``u + v`` and ``u - v`` are), written into ``out`` when given (any arrays
    of nb x nd x 2 x h elements whose reshape to that shape is a view, e.g. contiguous (nb, R))."""
    u, v = np.ascontiguousarray(u), np.ascontiguousarray(v)
    nb, S, nd, h = u.shape
    if out is None:
        out = (np.empty((nb, nd, 2, h), u.dtype), np.empty((nb, nd, 2, h), u.dtype))
    mx, mn = (np.reshape(o, (nb, nd, 2, h), copy=False) for o in out)  # raises rather than write a copy
    hi, lo = np.empty((nb, 2, nd * h), u.dtype), np.empty((nb, 2, nd * h), u.dtype)
    _get("extremes_pairs", _extremes_pairs_loop, fastmath=True)(u.reshape(nb, S, -1), v.reshape(nb, S, -1), hi, lo)
    for q in range(2):
        mx[:, :, q], mn[:, :, q] = hi[:, q].reshape(nb, nd, h), lo[:, q].reshape(nb, nd, h)
    return out


def extremes(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest and the smallest of ``t`` (nb, S, R) float32 over its middle axis, (nb, R) each:
    one pass over ``t`` (NumPy's ``max`` and ``min`` read it twice, 3x the time at the pose search's
    (64, 29, 4392) on an Intel Xeon; on an AMD EPYC 4.8 ms against NumPy's 6.8 ms and 9.9 ms for the
    element-wise ``if`` loop this replaced, which LLVM did not vectorise)."""
    t = np.ascontiguousarray(t)
    mx = np.empty((t.shape[0], t.shape[2]), t.dtype)
    mn = np.empty_like(mx)
    _get("extremes", _extremes_loop, fastmath=True)(t, mx, mn)  # compares only: exact for finite t
    return mx, mn


_HELPERS = ("_wrap", "_corner", "_scatter")  # called from the loops: compiled (and inlined) before any loop is


def _get(name: str, fn: Any, fastmath: bool = False) -> Any:
    if name not in _jit:
        import numba

        g = globals()
        for h in _HELPERS:
            if not isinstance(g[h], numba.core.dispatcher.Dispatcher):
                g[h] = numba.njit(cache=True, nogil=True, inline="always")(g[h])
        _jit[name] = numba.njit(cache=True, nogil=True, fastmath=fastmath)(fn)
    return _jit[name]


def insert(acc: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray,
           flat: np.ndarray, fimg: np.ndarray, ctf: np.ndarray | None, wts: np.ndarray) -> None:
    """Trilinear insertion into the float64 sums ``acc`` (P, P, P // 2 + 1, 3) (real, imaginary, weight) in place.

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
                                 np.ascontiguousarray(wts, dtype=np.float64), acc)


def extract(gre: np.ndarray, gim: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """Trilinear samples (n, m) complex64 of the projector grid (real and imaginary parts
    ``gre``/``gim``) at the frequencies ``kx``/``ky`` (m,) of the slices at ``rot`` (n, 3, 3),
    already multiplied by the padding factor."""
    n = rot.shape[0]
    out = np.empty((n, len(kx)), np.complex64)
    kx, ky = np.ascontiguousarray(kx, dtype=np.float64), np.ascontiguousarray(ky, dtype=np.float64)
    _get("extract", _extract_loop)(np.ascontiguousarray(rot, dtype=np.float64), kx, ky, gre, gim, out)
    return out


def insert_ctf(acc: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray,
               flat: np.ndarray, box: int, psize_A: float, fimg: np.ndarray, ctf: dict[str, np.ndarray] | None,
               shifts_px: np.ndarray, wts: np.ndarray) -> None:
    """Fused shift + CTF + trilinear insertion: ``F`` of the uncentred images ``fimg`` (n, b, b // 2 + 1)
    is translated by ``shifts_px`` (n, 2), multiplied by the CTF of ``ctf`` (arrays of
    :data:`cryoframe.geometry.ctf.CTF_PARAMS`, or None) and inserted with ``CTF^2`` weights; the
    CTF is RELION's ``sqrt(1 - A^2) sin chi + A cos chi`` written as ``sin(chi + arcsin A)``."""
    run_insert_ctf(acc, rot, kx, ky, flat, fimg, insert_ctf_params(kx, ky, box, psize_A, ctf, shifts_px, wts))


def insert_ctf_params(kx: np.ndarray, ky: np.ndarray, box: int, psize_A: float, ctf: dict[str, np.ndarray] | None,
                      shifts_px: np.ndarray, wts: np.ndarray) -> tuple[np.ndarray, ...]:
    """The compiled loop's per-frequency and per-particle parameters for :func:`insert_ctf`: plain
    NumPy arrays (what :mod:`cryoframe.geometry._kernel_worker` sends to its process)."""
    from cryoframe.geometry.ctf import electron_wavelength_A

    n = len(wts)
    s = np.hypot(kx, ky) / (box * psize_A)
    ang = np.arctan2(ky, kx)
    par = np.zeros((n, 11))
    if ctf is not None:
        lam = electron_wavelength_A(ctf["accel_kv"])
        df1, df2 = np.asarray(ctf["df1_A"], np.float64), np.asarray(ctf["df2_A"], np.float64)
        a2 = 2.0 * np.asarray(ctf["df_angle_rad"], np.float64)
        par[:, 0] = 0.5 * (df1 + df2)
        par[:, 1] = 0.5 * (df1 - df2)
        par[:, 2] = np.cos(a2)
        par[:, 3] = np.sin(a2)
        par[:, 4] = np.pi * lam
        par[:, 5] = 0.5 * np.pi * np.asarray(ctf["cs_mm"], np.float64) * 1e7 * lam**3
        par[:, 6] = np.asarray(ctf.get("phase_shift_rad", 0.0), np.float64) + np.arcsin(
            np.asarray(ctf["amp_contrast"], np.float64))
        par[:, 10] = 1.0
    par[:, 7] = wts
    par[:, 8] = shifts_px[:, 0] / box
    par[:, 9] = shifts_px[:, 1] / box
    vx, jx = np.unique(kx, return_inverse=True)
    vy, jy = np.unique(ky, return_inverse=True)
    return (s * s, np.cos(2 * ang), np.sin(2 * ang), par, jx.astype(np.int64).ravel(), jy.astype(np.int64).ravel(),
            vx, vy)


def run_insert_ctf(acc: np.ndarray, rot: np.ndarray, kx: np.ndarray, ky: np.ndarray, flat: np.ndarray,
                   fimg: np.ndarray, params: tuple[np.ndarray, ...]) -> None:
    """The compiled insertion loop of :func:`insert_ctf` with its :func:`insert_ctf_params`, into ``acc`` in place."""
    s2, c2a, s2a, par, jx, jy, vx, vy = params
    f = fimg.reshape(fimg.shape[0], -1)
    _get("insert_ctf", _insert_ctf_loop)(np.ascontiguousarray(rot, dtype=np.float64), kx, ky, flat, s2, c2a, s2a,
                                         np.ascontiguousarray(f.real, dtype=np.float32),
                                         np.ascontiguousarray(f.imag, dtype=np.float32), par, acc, jx, jy, vx, vy)


def warm(name: str = "insert_ctf") -> None:
    """Import numba and load kernel ``name`` from numba's disk cache now (about 0.5-1 s in a fresh
    process): a call on tiny inputs of the dtypes the real calls use, so the same compiled signature
    is loaded."""
    if not HAVE_NUMBA or name in _jit:
        return
    # the dtypes of fourier.image_freqs / new_sums (float64 kx, ky; int64 flat; float32 sums), box 4
    kx, ky, flat = np.zeros(1), np.zeros(1), np.zeros(1, np.int64)
    sums = np.zeros((8, 8, 5, 3), np.float32)
    rot = np.eye(3)[None] * 2.0
    fimg = np.zeros((1, 4, 3), np.complex64)
    if name == "insert_ctf":
        insert_ctf(sums, rot, kx, ky, flat, 4, 1.0, fimg, None, np.zeros((1, 2)), np.ones(1))
    elif name == "insert":
        insert(sums, rot, kx, ky, flat, fimg, None, np.ones(1))


def preload(name: str = "insert_ctf") -> None:
    """:func:`warm` in a daemon thread, so a job can read its metadata and images meanwhile; a caller
    that needs the kernel first simply waits on numba's compiler lock."""
    if not HAVE_NUMBA or name in _jit:
        return
    import threading

    threading.Thread(target=warm, args=(name,), name=f"cryoframe-numba-{name}", daemon=True).start()
