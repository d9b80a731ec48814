"""Per-partition E-step kernels of :class:`~cryoframe.algorithms.class2d.Class2D`.

Every function takes the array module ``xp`` (NumPy, or CuPy obtained through
:func:`cryoframe.backend.get_array_module`); nothing here imports cupy.

Conventions
-----------
* Images are ``(..., b, b)`` indexed ``[y, x]``; the centre is pixel ``b // 2``; coordinates and
  shifts ``(x, y)`` are in px relative to it (as in :mod:`cryoframe.testing.physics`).
* Fourier arrays are *centred-origin* half planes: ``rfft2(ifftshift(img))``, shape
  ``(b, b // 2 + 1)``, unnormalised.  A rotation about the box centre is then a rotation about DC.
* A particle in class ``k`` with in-plane angle ``psi`` and shift ``t`` is
  ``I(p) = A_k(R(psi) (p - t))`` with ``R = [[cos, -sin], [sin, cos]]`` (the project's pose
  convention ``I(p) = T(R p)``), i.e. its centre is at ``b // 2 + t``.
* Noise model: every independent complex Fourier component within the E-step limit has real and
  imaginary parts ~ N(0, sigma2(shell)), so
  ``log p(X | k, psi, t) = -sum_half h |X - CTF A_{k,psi} e^{-2 pi i f t / b}|^2 / (2 sigma2) - const``
  where ``h`` is 1/2 on the self-conjugate columns of the half plane and 1 elsewhere.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["bilinear_table", "cfft2", "combine", "ctf_half", "estep_partition", "gather", "half_weights",
           "icfft2", "pad_real", "rotation_table", "shell_average", "shell_map", "soft_mask"]

_MASS_EPS = 1e-6  # a particle contributes to a class's M-step sums when its class posterior exceeds this


# -- grids, masks and transforms -------------------------------------------------------------------
def _fft(xp: ModuleType) -> Any:
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft


def cfft2(xp: ModuleType, img: Any) -> Any:
    """Centred-origin half-plane FFT of real images ``(..., b, b)`` -> ``(..., b, b // 2 + 1)``."""
    return _fft(xp).rfft2(xp.fft.ifftshift(img, axes=(-2, -1)), axes=(-2, -1))


def icfft2(xp: ModuleType, f: Any, box: int) -> Any:
    """Inverse of :func:`cfft2`: real images ``(..., box, box)``."""
    return xp.fft.fftshift(_fft(xp).irfft2(f, s=(box, box), axes=(-2, -1)), axes=(-2, -1))


def freq_yx(box: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer frequencies (cycles per box) ``fy`` (box, 1) and ``fx`` (1, box // 2 + 1)."""
    fy = np.rint(np.fft.fftfreq(box) * box)[:, None]
    fx = np.arange(box // 2 + 1, dtype=np.float64)[None, :]
    return fy, fx


def shell_map(box: int) -> np.ndarray:
    """Resolution shell (rounded radius in cycles per box) of every half-plane frequency."""
    fy, fx = freq_yx(box)
    return np.rint(np.hypot(fy, fx)).astype(np.int64)


def half_weights(box: int) -> np.ndarray:
    """Multiplicity ``h`` of half-plane components: sum_half h g = 1/2 sum_full g for Hermitian g."""
    h = np.ones((box, box // 2 + 1))
    h[:, 0] = 0.5
    if box % 2 == 0:
        h[:, -1] = 0.5
    return h


def shell_average(arr: np.ndarray, box: int) -> np.ndarray:
    """h-weighted mean over each shell 0 .. box//2 - 1 of half-plane arrays (..., b, bh)."""
    sh, h = shell_map(box), half_weights(box)
    nsh = box // 2
    ok = sh < nsh
    m = np.zeros((sh.size, nsh))
    m[np.nonzero(ok.ravel())[0], sh[ok]] = h[ok]
    flat = arr.reshape(*arr.shape[:-2], -1)
    return (flat @ m) / m.sum(0)


def soft_mask(box: int, radius_px: float, edge_px: float = 5.0) -> np.ndarray:
    """Circular mask (box, box) float32: 1 inside ``radius_px``, raised-cosine edge ``edge_px`` wide."""
    g = np.arange(box, dtype=np.float64) - box // 2
    r = np.hypot(g[None, :], g[:, None])
    t = np.clip((r - radius_px) / max(edge_px, 1e-6), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def pad_real(xp: ModuleType, img: Any, factor: int = 2) -> Any:
    """Zero-pad real images ``(..., b, b)`` to ``factor * b`` keeping the centre pixel centred."""
    b = img.shape[-1]
    lo = (factor * b) // 2 - b // 2
    out = xp.zeros(img.shape[:-2] + (factor * b, factor * b), dtype=img.dtype)
    out[..., lo : lo + b, lo : lo + b] = img
    return out


def ctf_half(xp: ModuleType, box: int, psize_A: float, p: dict[str, Any]) -> Any:
    """Per-particle CTF (c, box, box // 2 + 1) float32 on the half-plane grid (RELION sign, CTF(0) = +A).

    ``p`` holds (c,) arrays ``df1_A``, ``df2_A`` (Å), ``df_angle_rad``, ``accel_kv`` (kV), ``cs_mm``
    (mm), ``amp_contrast`` and optionally ``phase_shift_rad``; same formula as
    :func:`cryoframe.testing.ctf_at`.
    """
    fy, fx = freq_yx(box)
    sy = xp.asarray(fy / (box * psize_A))
    sx = xp.asarray(fx / (box * psize_A))

    def col(name: str, default: float | None = None) -> Any:
        v = p.get(name, default)
        return xp.asarray(v, dtype=xp.float64).reshape(-1, 1, 1)

    v = col("accel_kv") * 1e3
    lam = 12.2643247 / xp.sqrt(v * (1.0 + v * 0.978466e-6))
    df1, df2 = col("df1_A"), col("df2_A")
    s2 = sx * sx + sy * sy
    d = 0.5 * (df1 + df2) + 0.5 * (df1 - df2) * xp.cos(2.0 * (xp.arctan2(sy, sx) - col("df_angle_rad")))
    chi = (math.pi * lam * d * s2 - 0.5 * math.pi * col("cs_mm") * 1e7 * lam**3 * s2 * s2
           + col("phase_shift_rad", 0.0))
    a = col("amp_contrast")
    return (xp.sqrt(1.0 - a * a) * xp.sin(chi) + a * xp.cos(chi)).astype(xp.float32)


# -- bilinear sampling of Hermitian half planes ----------------------------------------------------
def bilinear_table(xp: ModuleType, sx: Any, sy: Any, size: int, weight: Any = 1.0) -> tuple[Any, Any, Any]:
    """Gather table sampling a (size, size // 2 + 1) half plane at real frequencies ``(sx, sy)``.

    Points with ``sx < 0`` are read at ``-s`` and conjugated (Hermitian symmetry).  Returns flat
    indices (..., 4) int64, weights (..., 4) float32 (times ``weight``) and the conjugation flags.
    """
    ph = size // 2 + 1
    flip = sx < 0
    sx = xp.where(flip, -sx, sx)
    sy = xp.where(flip, -sy, sy)
    x0, y0 = xp.floor(sx), xp.floor(sy)
    ax, ay = sx - x0, sy - y0
    idx, w = [], []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        wt = (ax if dx else 1.0 - ax) * (ay if dy else 1.0 - ay) * weight
        w.append(xp.where(xi <= ph - 1, wt, 0.0))
        idx.append(xp.mod(yi, size).astype(xp.int64) * ph + xp.minimum(xi, ph - 1).astype(xp.int64))
    return xp.stack(idx, -1), xp.stack(w, -1).astype(xp.float32), flip


def rotation_table(xp: ModuleType, box: int, angles_deg: Any, scale: int = 1) -> tuple[Any, Any, Any]:
    """Table that samples a half plane of size ``scale * box`` at ``scale * R(angle) f`` for every
    half-plane frequency ``f`` of a ``box`` grid within the Nyquist circle (zero outside).

    With source ``S`` and angle ``a`` the result is ``S(R(a) f)``: the spectrum of the image
    ``p -> s(R(a) p)``.  Shapes (A, box, box // 2 + 1, 4).
    """
    fy, fx = (xp.asarray(v) for v in freq_yx(box))
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64)).reshape(-1, 1, 1)
    c, s = xp.asarray(np.cos(rad)), xp.asarray(np.sin(rad))
    inside = (xp.asarray(shell_map(box)) <= box // 2 - 1).astype(xp.float64)
    return bilinear_table(xp, scale * (c * fx - s * fy), scale * (s * fx + c * fy), scale * box, inside)


def gather(xp: ModuleType, src: Any, table: tuple[Any, Any, Any], paired: bool = False) -> Any:
    """Sample ``src`` with a :func:`bilinear_table`.

    ``paired=False``: one source ``(P, P // 2 + 1)`` -> ``(A, b, bh)``.  ``paired=True``: sources
    ``(A, P, P // 2 + 1)``, source ``a`` sampled with table entry ``a``.
    """
    idx, w, flip = table
    if paired:
        flat = src.reshape(src.shape[0], -1)
        vals = xp.take_along_axis(flat, idx.reshape(idx.shape[0], -1), axis=1).reshape(idx.shape)
    else:
        vals = src.reshape(-1)[idx]
    out = (vals * w).sum(-1)
    return xp.where(flip, xp.conj(out), out) if xp.iscomplexobj(out) else out


def _window(box: int, offsets: np.ndarray, up: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (iy, ix) of the offsets (S, 2) px (x, y) on the ``up * box`` correlation grid."""
    n = up * box
    q = np.rint(np.asarray(offsets, dtype=np.float64) * up).astype(np.int64) % n
    return q[:, 1], q[:, 0]


def _rows_fine(box: int, up: int) -> np.ndarray:
    fy, _ = freq_yx(box)
    return np.where(fy[:, 0] >= 0, fy[:, 0], up * box + fy[:, 0]).astype(np.int64)


# -- the E-step ------------------------------------------------------------------------------------
def estep_partition(
    images: Any, ctf_params: dict[str, Any] | None, model: dict[str, Any], xp: ModuleType = np,
    need_stats: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """E-step of one partition of particles + the M-step sufficient statistics it contributes.

    ``images`` (c, b, b) real; ``ctf_params`` per-particle (c,) arrays (see :func:`ctf_half`) or
    None (no CTF); ``model`` (host arrays): ``refs`` (K, b, b) float32 masked class averages,
    ``log_prior`` (K,), ``sigma2`` (b // 2,) noise spectrum per shell, ``psi_deg`` (R,),
    ``offsets`` (S, 2) px, ``up`` (correlation upsampling), ``e_shell`` (last shell used in the
    likelihood), ``mask`` (b, b) particle mask, ``psize_A`` (Å/px), ``scale_range`` (lo, hi) or
    None: with a range, every sample also fits a contrast scale ``a`` (model ``a CTF A``), the
    maximiser of its log-likelihood clipped to the range.

    Returns host arrays: ``particles`` (per particle: ``label`` = most probable class (marginal),
    ``posterior_max`` = largest posterior of any sample, ``psi_deg``, ``shift`` (c, 2) px and
    ``scale`` of the best sample of that class, ``ess`` = 1/sum p^2 over all samples, ``loglik``
    = log of the evidence) and, with ``need_stats``, ``stats``: ``num`` (K, b, bh) = sum w a CTF X
    aligned back to the class frame, ``den`` (K, b, bh) = sum w a^2 CTF^2 (same frame), ``wsum``
    (K,) class posterior mass, ``asum`` (K,) = sum w a, ``noise`` (b, bh) = sum E|X - a CTF A|^2
    per frequency, ``loglik`` and ``n``.  Rotations of references and statistics use bilinear
    interpolation on 2x zero-padded spectra (RELION's padding); shifts come from one inverse FFT
    per particle, class and angle.
    """
    from cryoframe.backend import to_host

    refs = xp.asarray(model["refs"], dtype=xp.float32)
    nk, b = refs.shape[0], refs.shape[-1]
    bh, nf = b // 2 + 1, b * (b // 2 + 1)
    up = int(model["up"])
    ub = up * b
    psi = np.asarray(model["psi_deg"], dtype=np.float64)
    nr, ns = len(psi), len(model["offsets"])
    iy, ix = (xp.asarray(v) for v in _window(b, model["offsets"], up))
    shells = shell_map(b)
    h = xp.asarray(half_weights(b))
    rec = xp.asarray(shells <= b // 2 - 1)
    emask = xp.asarray((shells >= 1) & (shells <= int(model["e_shell"])))
    sig = xp.asarray(np.asarray(model["sigma2"], dtype=np.float64)[np.minimum(shells, b // 2 - 1)])
    inv = xp.where(emask, 1.0 / sig, 0.0)

    x = cfft2(xp, xp.asarray(images, dtype=xp.float32) * xp.asarray(model["mask"], dtype=xp.float32))
    c = x.shape[0]
    if ctf_params is not None:
        ctf = ctf_half(xp, b, float(model["psize_A"]), ctf_params)
        cx, c2 = x * ctf, ctf * ctf
    else:
        cx, c2 = x, xp.ones((1, b, bh), dtype=xp.float32)
    xw = (cx * inv.astype(xp.float32)).astype(xp.complex64)
    c2w = (c2 * (h * inv)).astype(xp.float32).reshape(-1, nf)
    absx2 = (x.real**2 + x.imag**2).astype(xp.float64)
    norm = float(to_host((h * emask * xp.log(2 * np.pi * sig)).sum()))  # Gaussian normalisation
    const = -0.5 * (absx2 * (h * inv)).sum((1, 2)) - norm

    refs_f = cfft2(xp, pad_real(xp, refs, 2))  # (K, 2b, b + 1): padded for accurate rotation
    t_ref = rotation_table(xp, b, psi, 2)
    fft = _fft(xp)
    rows = xp.asarray(_rows_fine(b, up))

    def rotated(k: int) -> Any:
        return gather(xp, refs_f[k], t_ref).astype(xp.complex64)  # (R, b, bh)

    logl = xp.empty((c, nk, nr, ns), dtype=xp.float32)
    srange = model.get("scale_range")
    alpha = xp.empty((c, nk, nr, ns), dtype=xp.float32) if srange is not None else None
    for k in range(nk):
        ar = rotated(k)
        quad = 0.5 * (c2w @ (ar.real**2 + ar.imag**2).reshape(nr, nf).T)  # (c | 1, R)
        z = xw[:, None] * xp.conj(ar)[None]
        if up > 1:
            zf = xp.zeros((c, nr, ub, ub // 2 + 1), dtype=xp.complex64)
            zf[:, :, rows, :bh] = z
            z = zf
        corr = fft.irfft2(z, s=(ub, ub), axes=(-2, -1))
        cross = corr[..., iy, ix] * np.float32(0.5 * ub * ub)
        q = quad[..., None].astype(xp.float32)
        if alpha is None:
            logl[:, k] = cross - q
        else:  # per-sample contrast scale a maximising a cross - a^2 q, within scale_range
            a = xp.clip(cross / xp.maximum(2 * q, 1e-30), float(srange[0]), float(srange[1]))
            alpha[:, k] = a
            logl[:, k] = a * cross - a * a * q
    lp = xp.asarray(np.asarray(model["log_prior"], dtype=np.float64) - math.log(nr * ns), dtype=xp.float32)
    logl += lp[None, :, None, None]
    top = logl.reshape(c, -1).max(1)
    p = xp.exp(logl - top[:, None, None, None])
    del logl
    zsum = p.reshape(c, -1).sum(1)
    p /= zsum[:, None, None, None]
    loglik = top.astype(xp.float64) + xp.log(zsum.astype(xp.float64)) + const

    wk = p.sum((2, 3))  # (c, K)
    label = xp.argmax(wk, 1)
    pl = p[xp.arange(c), label].reshape(c, -1)
    best = xp.argmax(pl, 1)
    flat = p.reshape(c, -1)
    offs = np.asarray(model["offsets"], dtype=np.float32)
    best_h = to_host(best)
    part = {
        "label": to_host(label).astype(np.int32),
        "posterior_max": to_host(flat.max(1)).astype(np.float32),
        "psi_deg": psi[best_h // ns].astype(np.float32),
        "shift": offs[best_h % ns].reshape(-1, 2),
        "scale": (np.ones(c, np.float32) if alpha is None else
                  to_host(alpha[xp.arange(c), label].reshape(c, -1)[xp.arange(c), best]).astype(np.float32)),
        "ess": to_host(1.0 / (flat.astype(xp.float64) ** 2).sum(1)).astype(np.float32),
        "loglik": to_host(loglik).astype(np.float64),
    }
    if not need_stats:
        return {"particles": part}

    num = xp.zeros((nk, b, bh), dtype=xp.complex128)
    den = xp.zeros((nk, b, bh), dtype=xp.float64)
    noise = absx2.sum(0)
    asum = xp.zeros(nk, dtype=xp.float64)
    t_num = rotation_table(xp, b, -psi, 2)
    t_den = rotation_table(xp, b, -psi, 1)
    wk_h = to_host(wk)
    for k in range(nk):
        sel = np.nonzero(wk_h[:, k] > _MASS_EPS)[0]
        if len(sel) == 0:
            continue
        sel_x = xp.asarray(sel)
        pk = p[sel_x, k]  # (m, R, S)
        ak = alpha[sel_x, k] if alpha is not None else None
        pa = pk * ak if ak is not None else pk
        m = len(sel)
        wmap = xp.zeros((m, nr, ub, ub), dtype=xp.float32)
        wmap[..., iy, ix] = pa
        wf = fft.rfft2(wmap, axes=(-2, -1))
        if up > 1:
            wf = wf[:, :, rows, :bh]
        numr = (cx[sel_x][:, None] * xp.conj(wf)).sum(0)  # (R, b, bh): Σ w CTF X shifted back
        asum[k] = pa.astype(xp.float64).sum()
        c2k = c2[sel_x] if c2.shape[0] > 1 else xp.ones((m, b, bh), dtype=xp.float32)
        denr = (pa * ak if ak is not None else pk).sum(-1).T @ c2k.reshape(m, nf)  # (R, F): Σ w a^2 CTF^2
        denr = denr.reshape(nr, b, bh)
        ar = rotated(k)
        noise += (denr * (ar.real**2 + ar.imag**2) - 2.0 * (xp.conj(ar) * numr).real).sum(0)
        padded = cfft2(xp, pad_real(xp, icfft2(xp, numr, b), 2))
        num[k] = gather(xp, padded, t_num, paired=True).sum(0)
        den[k] = gather(xp, denr, t_den, paired=True).sum(0)
    stats = {
        "num": to_host(num * rec), "den": to_host(den * rec), "wsum": to_host(wk.astype(xp.float64).sum(0)),
        "asum": to_host(asum), "noise": to_host(noise), "loglik": np.asarray(float(to_host(loglik.sum()))),
        "n": np.asarray(c),
    }
    return {"particles": part, "stats": stats}


def estep_task(images: Any, ctf_params: dict[str, Any] | None, model: dict[str, Any], device: str,
               need_stats: bool) -> dict[str, dict[str, np.ndarray]]:
    """:func:`estep_partition` with the array module named by ``device`` (for dask tasks)."""
    from cryoframe.backend import get_array_module

    return estep_partition(images, ctf_params, model, get_array_module(device), need_stats)


def combine(*parts: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Reduce partition results: statistics summed, per-particle arrays concatenated in order."""
    out: dict[str, dict[str, np.ndarray]] = {
        "particles": {k: np.concatenate([p["particles"][k] for p in parts]) for k in parts[0]["particles"]}
    }
    if "stats" in parts[0]:
        st = {k: np.array(v, copy=True) for k, v in parts[0]["stats"].items()}
        for p in parts[1:]:
            for k, v in p["stats"].items():
                st[k] = st[k] + v
        out["stats"] = st
    return out
