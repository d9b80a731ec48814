"""Per-partition E-step kernels of :class:`~cryoframe.algorithms.class2d.Class2D`.

Every function takes the array module ``xp`` (NumPy, or CuPy obtained through
:func:`cryoframe.backend.get_array_module`); nothing here imports cupy.

Conventions
-----------
* Images are ``(..., b, b)`` indexed ``[y, x]``; the centre is pixel ``b // 2``; coordinates and
  shifts ``(x, y)`` are in px relative to it (as in :mod:`cryoframe.synthetic.physics`).
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

from cryoframe.algorithms.class2d import kernels as kern
from cryoframe.geometry.ctf import CTF_PARAMS, ctf_at

__all__ = ["bilinear_table", "cfft2", "combine", "ctf_half", "estep_partition", "freq_select", "gather",
           "half_weights", "icfft2", "pad_real", "rotation_sel", "rotation_table", "shell_average", "shell_map",
           "shell_matrix",
           "soft_mask"]

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


def shell_matrix(box: int) -> np.ndarray:
    """(box * (box // 2 + 1), box // 2) matrix of h weights: flat half plane @ it = h-weighted shell sums."""
    sh, h = shell_map(box).ravel(), half_weights(box).ravel()
    ok = np.nonzero(sh < box // 2)[0]
    m = np.zeros((sh.size, box // 2))
    m[ok, sh[ok]] = h[ok]
    return m


def shell_average(arr: np.ndarray, box: int) -> np.ndarray:
    """h-weighted mean over each shell 0 .. box//2 - 1 of half-plane arrays (..., b, bh)."""
    m = shell_matrix(box)
    return (arr.reshape(*arr.shape[:-2], -1) @ m) / m.sum(0)


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
    (mm), ``amp_contrast`` and optionally ``phase_shift_rad`` and ``flip_phases`` (non-zero: only
    the sign of the CTF, i.e. phase flipping); the one CTF of :mod:`cryoframe.geometry.ctf`.
    """
    fy, fx = freq_yx(box)
    sy = xp.asarray(fy / (box * psize_A))
    sx = xp.asarray(fx / (box * psize_A))

    def col(name: str, default: float | None = None) -> Any:
        v = p.get(name, default)
        return xp.asarray(v, dtype=xp.float64).reshape(-1, 1, 1)

    ctf = ctf_at(sx, sy, *(col(k, 0.0 if k == "phase_shift_rad" else None) for k in CTF_PARAMS),
                 xp=xp).astype(xp.float32)
    if p.get("flip_phases") is not None:  # phase flipping only (RELION --only_flip_phases): sign of the CTF
        ctf = xp.where(col("flip_phases") > 0, xp.where(ctf >= 0, 1.0, -1.0), ctf).astype(xp.float32)
    return ctf


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


def freq_select(box: int, e_shell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat half-plane indices of the frequencies with shell <= ``e_shell`` and their ``fy``, ``fx``."""
    fy, fx = freq_yx(box)
    sel = np.nonzero((shell_map(box) <= e_shell).ravel())[0]
    shape = (box, box // 2 + 1)
    return sel, np.broadcast_to(fy, shape).ravel()[sel], np.broadcast_to(fx, shape).ravel()[sel]


def rotation_sel(xp: ModuleType, box: int, fy: np.ndarray, fx: np.ndarray, angles_deg: Any,
                  scale: int) -> tuple[Any, Any, Any]:
    """:func:`rotation_table` restricted to the frequencies ``(fy, fx)`` (F,): shapes (A, F, 4)."""
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64)).reshape(-1, 1)
    c, s = xp.asarray(np.cos(rad)), xp.asarray(np.sin(rad))
    fyx, fxx = xp.asarray(fy[None, :]), xp.asarray(fx[None, :])
    return bilinear_table(xp, scale * (c * fxx - s * fyx), scale * (s * fxx + c * fyx), scale * box)


def _bmat(xp: ModuleType, ar: Any, pc: Any, ps: Any) -> Any:
    """``[Re B; Im B]`` (2F, R S) float32 with ``B(f, (r, t)) = conj(A_r(f)) P(f, t)``, from rotated
    references ``ar`` (R, F) and the phase table ``P = pc + i ps`` (F, S)."""
    nr, nf = ar.shape
    out = xp.empty((2 * nf, nr, pc.shape[1]), dtype=xp.float32)
    a_r, a_i = ar.real.T[:, :, None], ar.imag.T[:, :, None]
    xp.multiply(a_r, pc[:, None, :], out=out[:nf])
    out[:nf] += a_i * ps[:, None, :]
    xp.multiply(a_r, ps[:, None, :], out=out[nf:])
    out[nf:] -= a_i * pc[:, None, :]
    return out.reshape(2 * nf, -1)


def _group_sum(xp: ModuleType, vals: Any, gidx: Any, ng: int) -> Any:
    """Sum rows of ``vals`` (c, ...) into ``ng`` groups given per-row group indices (c,)."""
    onehot = xp.zeros((ng, vals.shape[0]), dtype=vals.dtype)
    onehot[gidx, xp.arange(vals.shape[0])] = 1
    return (onehot @ vals.reshape(vals.shape[0], -1)).reshape((ng, *vals.shape[1:]))


# -- the E-step ------------------------------------------------------------------------------------
def estep_partition(
    images: Any, ctf_params: dict[str, Any] | None, model: dict[str, Any], xp: ModuleType = np,
    need_stats: bool = True, groups: Any = None, fused: bool | None = None, scales: Any = None,
) -> dict[str, dict[str, np.ndarray]]:
    """E-step of one partition of particles + the M-step sufficient statistics it contributes.

    ``images`` (c, b, b) real; ``ctf_params`` per-particle (c,) arrays (see :func:`ctf_half`) or
    None (no CTF); ``fused``: use the compiled kernels of :mod:`.kernels` (default: for NumPy);
    ``groups`` (c,) noise-group index of every particle (None: all group 0);
    ``model`` (host arrays): ``refs`` (K, b, b) float32 masked class averages, ``log_prior`` (K,),
    ``sigma2`` (G, b // 2) noise spectrum per group and shell (or (b // 2,) for one group),
    ``psi_deg`` (R,), ``offsets`` (S, 2) px (any sub-pixel values), ``e_shell`` (last shell used:
    the E-step and the statistics work on the frequencies with shell <= e_shell, as RELION's
    ``current_size``), ``mask`` (b, b) particle mask, ``psize_A`` (Å/px), ``scale_range`` (lo, hi)
    or None: with a range, every sample also fits a contrast scale ``a`` (model ``a CTF A``), the
    maximiser of its log-likelihood clipped to the range.  ``scales`` (c,) with a ``scale_range``:
    per-particle contrast scales instead (RELION's ``--scale``/norm correction); ``misfit_shell``
    (0: off): measure every particle's low-resolution misfit (:mod:`.misfit`) at its best sample;
    ``outliers`` None or ``{"min_evidence", "max_misfit"}``: particles with less evidence over an
    empty pick or more misfit get label K (the outlier class) and leave the statistics (class sums,
    priors, noise).  With ``scales``, every sample of a
    particle uses the particle's fixed scale (from the previous iteration), and the returned
    ``scale`` is the new estimate, the least-squares scale of the best sample clipped to the range.
    A per-sample free scale makes the score a correlation: junk then matches any class as well as
    its own; a fixed per-particle scale keeps the likelihood's preference for flat classes.

    Per class, the cross terms of every angle and translation come from one real matrix product
    over the selected frequencies, ``[Re, -Im](X CTF h / sigma2) (c, 2F) @ B (2F, R S)`` with
    ``B = [Re; Im] conj(A_{k,psi}(f)) P(f, t)`` and ``P(f, t) = exp(2 pi i f.t / b)``.  The
    statistics are, per noise group, ``V = p^T (R S, m) @ [Re, Im](CTF X) (m, 2F2)`` shifted back
    into the class frame by ``sum_t P(f, t) V(r, t, f)``.  Rotations of references and statistics
    use bilinear interpolation on 2x zero-padded spectra (RELION's padding).

    Returns host arrays: ``particles`` (per particle: ``label`` = most probable class (marginal),
    ``posterior_max`` = largest posterior of any sample, ``psi_deg``, ``shift`` (c, 2) px and
    ``scale`` of the best sample of that class, ``ess`` = 1/sum p^2 over all samples, ``loglik``
    = log of the evidence) and, with ``need_stats``, ``stats``: ``num`` (K, b, bh) = sum w a CTF X
    / sigma2 aligned back to the class frame, ``den`` (K, b, bh) = sum w a^2 CTF^2 / sigma2 (same
    frame; sigma2 of each particle's group), both zero beyond ``e_shell``, ``wsum`` (K,) class
    posterior mass, ``asum`` (K,) = sum w a, ``noise`` (G, b // 2) = per group and shell the h-weighted sum of E|X - a CTF A|^2, ``count`` (G,)
    particles per group, ``loglik`` and ``n``.
    """
    from cryoframe.backend import to_host

    refs = xp.asarray(model["refs"], dtype=xp.float32)
    nk, b = refs.shape[0], refs.shape[-1]
    bh, nsh = b // 2 + 1, b // 2
    psi = np.asarray(model["psi_deg"], dtype=np.float64)
    offs = np.asarray(model["offsets"], dtype=np.float64).reshape(-1, 2)
    nr, ns = len(psi), len(offs)
    e_shell = int(min(int(model["e_shell"]), nsh - 1))
    # statistics use 2 shells more than the E-step: rotating them back interpolates across the edge
    sel2_h, fy2, fx2 = freq_select(b, e_shell + 2)
    pos = np.nonzero(shell_map(b).ravel()[sel2_h] <= e_shell)[0]  # the E-step frequencies within sel2
    sel_h, fy, fx = sel2_h[pos], fy2[pos], fx2[pos]
    nf, nf2 = len(sel_h), len(sel2_h)
    sel2 = xp.asarray(sel2_h)
    posx = xp.asarray(pos)
    shells = shell_map(b).ravel()[sel_h]
    h = half_weights(b).ravel()[sel_h]
    sig_all = np.atleast_2d(np.asarray(model["sigma2"], dtype=np.float64))  # (G, nsh)
    ng = sig_all.shape[0]

    x_full = cfft2(xp, xp.asarray(images, dtype=xp.float32) * xp.asarray(model["mask"], dtype=xp.float32))
    c = x_full.shape[0]
    gidx = xp.zeros(c, dtype=xp.int64) if groups is None else xp.asarray(np.asarray(groups), dtype=xp.int64)
    x2 = x_full.reshape(c, -1)[:, sel2]  # (c, F2)
    x = x2[:, posx]  # (c, F)
    sig = xp.asarray(sig_all[:, np.minimum(shells, nsh - 1)])[gidx]  # (c, F) float64
    inv = xp.where(xp.asarray(shells >= 1)[None, :], 1.0 / sig, 0.0)  # DC carries no likelihood
    if ctf_params is not None:
        ctf2 = ctf_half(xp, b, float(model["psize_A"]), ctf_params).reshape(c, -1)[:, sel2]
        cx2, c2_2 = x2 * ctf2, ctf2 * ctf2
        cx, c2 = cx2[:, posx], c2_2[:, posx]
    else:
        cx2, c2_2 = x2, xp.ones((c, nf2), dtype=xp.float32)
        cx, c2 = x, c2_2[:, posx]
    hx = xp.asarray(h)
    xw = cx * (hx * inv).astype(xp.float32)  # (c, F)
    xre = xp.concatenate([xw.real, -xw.imag], 1).astype(xp.float32)  # (c, 2F): Re(xw B) = xre @ [Re B; Im B]
    c2w = (c2 * (hx * inv)).astype(xp.float32)  # (c, F)
    absx2 = (x.real.astype(xp.float64) ** 2 + x.imag.astype(xp.float64) ** 2)
    emask = xp.asarray((shells >= 1).astype(np.float64))
    const = -0.5 * (absx2 * hx * inv).sum(1) - (hx * emask * xp.log(2 * np.pi * sig)).sum(1)

    srange = model.get("scale_range")
    afix = None
    if scales is not None and srange is not None:  # per-particle scale: a cross - a^2 q with a fixed
        afix = xp.asarray(np.asarray(scales, dtype=np.float32).reshape(c))
        xre_u, c2w_u = xre, c2w
        xre, c2w = xre * afix[:, None], c2w * (afix * afix)[:, None]
    refs_f = cfft2(xp, pad_real(xp, refs, 2))  # (K, 2b, b + 1): padded for accurate rotation
    t_ref = rotation_sel(xp, b, fy, fx, psi, 2)
    ang = 2 * np.pi * (fx[:, None] * offs[None, :, 0] + fy[:, None] * offs[None, :, 1]) / b  # (F, S)
    pc, ps = xp.asarray(np.cos(ang), dtype=xp.float32), xp.asarray(np.sin(ang), dtype=xp.float32)

    def rotated(k: int) -> Any:
        return gather(xp, refs_f[k], t_ref).astype(xp.complex64)  # (R, F)

    logl = xp.empty((c, nk, nr, ns), dtype=xp.float32)
    alpha = xp.empty((c, nk, nr, ns), dtype=xp.float32) if srange is not None and afix is None else None
    srange_k = srange if afix is None else None
    prec = float(model.get("scale_prec", 0.0))
    lp = np.asarray(model["log_prior"], dtype=np.float64) - math.log(nr * ns)
    if fused is None:
        fused = xp is np
    for k in range(nk):
        ar = rotated(k)
        quad = 0.5 * (c2w @ (ar.real**2 + ar.imag**2).T)  # (c, R)
        bm = kern.bmat(ar, pc, ps) if fused else _bmat(xp, ar, pc, ps)
        cross = (xre @ bm).reshape(c, nr, ns)  # all angles and translations at once
        del bm
        if fused:
            kern.score(cross, quad, srange_k, float(lp[k]), logl[:, k], None if alpha is None else alpha[:, k],
                       prec)
            continue
        q = quad[..., None].astype(xp.float32)
        if srange is None or alpha is None:  # (both None or neither)
            logl[:, k] = cross - q + np.float32(lp[k])
        else:  # per-sample contrast scale under its prior, within scale_range
            a, sc = scale_score(xp, cross, q, srange, prec)
            alpha[:, k] = a
            logl[:, k] = sc + np.float32(lp[k])
    if fused:
        post = kern.posterior(logl.reshape(c, nk, nr * ns))
        p = logl
        top, zsum, wk, label, best = post["top"], post["zsum"], post["wk"], post["label"], post["best"]
        pmax, ess = post["pmax"], post["ess"]
    else:
        top = logl.reshape(c, -1).max(1)
        p = xp.exp(logl - top[:, None, None, None])
        del logl
        zsum = p.reshape(c, -1).sum(1)
        p /= zsum[:, None, None, None]
        wk = p.sum((2, 3))  # (c, K)
        label = xp.argmax(wk, 1)
        best = xp.argmax(p[xp.arange(c), label].reshape(c, -1), 1)
        flat = p.reshape(c, -1)
        pmax, ess = flat.max(1), 1.0 / (flat.astype(xp.float64) ** 2).sum(1)
    loglik = top.astype(xp.float64) + xp.log(zsum.astype(xp.float64)) + const
    best_h = to_host(best)
    if afix is not None:
        assert srange is not None  # afix is only set with a scale range (see above)
        new_scale = _best_scale(xp, xre_u, c2w_u, to_host(label), best_h, ns, rotated, pc, ps, srange)
    psi_out = psi[best_h // ns].astype(np.float64)
    shift_out = offs[best_h % ns].astype(np.float64).reshape(-1, 2)
    if model.get("refine_poses") and c > 0:
        psi_out, shift_out = refine_poses(
            xp, xw if afix is None else xw * afix[:, None], c2w, refs_f, fy, fx, b, to_host(label), psi_out,
            shift_out, float(model["psi_step_deg"]), float(model["offset_step_px"]),
            srange if afix is None else None, prec)
    misfit = np.full(c, np.nan, dtype=np.float32)
    label_out = to_host(label).astype(np.int32)
    gain = to_host(loglik - const).astype(np.float32)
    scale_best = (to_host(afix) if afix is not None else None if alpha is None else
                  to_host(alpha[xp.arange(c), label].reshape(c, -1)[xp.arange(c), best]).astype(np.float32))
    if model.get("misfit_shell") and c > 0:  # low-resolution misfit of the best sample (final pass, outliers)
        from cryoframe.algorithms.class2d.misfit import low_band_misfit

        bi = np.nonzero((shells >= 1) & (shells <= int(model["misfit_shell"])))[0]
        bx = xp.asarray(bi)
        at_pose = xp.empty((c, len(bi)), dtype=xp.complex64)  # each particle's class at its best angle
        for k in np.unique(label_out):
            mem = np.nonzero(label_out == k)[0]
            at_pose[xp.asarray(mem)] = gather(xp, refs_f[int(k)], rotation_sel(xp, b, fy[bi], fx[bi], psi_out[mem], 2))
        misfit = low_band_misfit(xp, x[:, bx], ctf2[:, posx][:, bx] if ctf_params is not None else None,
                                 inv[:, bx], h[bi], fy[bi], fx[bi], b, at_pose, shift_out, scale_best)
    outlier = np.zeros(c, dtype=bool)
    lim = model.get("outliers")
    if lim and c > 0:  # particles that fit no class go to the outlier class K and leave the statistics
        outlier = (gain < float(lim["min_evidence"])) | (misfit > float(lim["max_misfit"]))
        label_out[outlier] = nk
        if outlier.any():
            ox = xp.asarray(np.nonzero(outlier)[0])
            p[ox] = 0
            wk[ox] = 0
    part = {
        "label": label_out,
        "posterior_max": to_host(pmax).astype(np.float32),
        "psi_deg": np.mod(psi_out, 360.0).astype(np.float32),
        "shift": shift_out.astype(np.float32),
        "scale": (new_scale if afix is not None else np.ones(c, np.float32) if scale_best is None else scale_best),
        "ess": to_host(ess).astype(np.float32),
        "loglik": to_host(loglik).astype(np.float64),
        "gain": gain,
        "misfit": misfit,
    }
    if not need_stats:
        return {"particles": part}

    ang2 = 2 * np.pi * (fx2[:, None] * offs[None, :, 0] + fy2[:, None] * offs[None, :, 1]) / b  # (F2, S)
    shells2 = shell_map(b).ravel()[sel2_h]
    sig2 = sig_all[:, np.minimum(shells2, nsh - 1)]  # (G, F2)
    pc2, ps2 = xp.asarray(np.cos(ang2), dtype=xp.float32), xp.asarray(np.sin(ang2), dtype=xp.float32)
    pct2, pst2 = (np.ascontiguousarray(t.T) for t in (pc2, ps2)) if fused else (None, None)
    cx2r = xp.concatenate([cx2.real, cx2.imag], 1).astype(xp.float32)  # (c, 2F2)
    num = xp.zeros((nk, b * bh), dtype=xp.complex128)
    den = xp.zeros((nk, b * bh), dtype=xp.float64)
    resid = xp.zeros((ng, nf), dtype=xp.float64)  # per group: sum_i E|X - a CTF A|^2 - |X|^2
    asum = xp.zeros(nk, dtype=xp.float64)
    pad_sel = xp.zeros((nr, b * bh), dtype=xp.complex64)
    t_num = rotation_table(xp, b, -psi, 2)
    t_den = rotation_table(xp, b, -psi, 1)
    wk_h, g_h = to_host(wk), to_host(gidx)
    for k in range(nk):
        mem = np.nonzero(wk_h[:, k] > _MASS_EPS)[0]
        if len(mem) == 0:
            continue
        ar = rotated(k)
        a2 = (ar.real**2 + ar.imag**2).astype(xp.float32)
        numr = xp.zeros((nr, nf2), dtype=xp.complex64)
        denr = xp.zeros((nr, nf2), dtype=xp.float32)
        for g in np.unique(g_h[mem]):
            sub = mem[g_h[mem] == g]
            mx = xp.asarray(sub)
            m = len(sub)
            pk = p[mx, k]  # (m, R, S)
            am = alpha[mx, k] if alpha is not None else None if afix is None else afix[mx, None, None]
            pa = pk * am if am is not None else pk
            asum[k] += float(pa.astype(xp.float64).sum())
            dpa = (pa * am if am is not None else pk).sum(-1)  # (m, R): sum_t w a^2
            # V(r, t, f) = sum_i w a CTF X; shifted back into the class frame: Y(r, f) = sum_t P(f, t) V
            v = (pa.reshape(m, nr * ns).T @ cx2r[mx]).reshape(nr, ns, 2 * nf2)
            if pct2 is not None and pst2 is not None:  # fused (the host tables exist only then)
                y = kern.shift_back(v, pct2, pst2)
            else:
                vr, vi = v[..., :nf2], v[..., nf2:]
                y = (xp.einsum("ft,rtf->rf", pc2, vr) - xp.einsum("ft,rtf->rf", ps2, vi)
                     + 1j * (xp.einsum("ft,rtf->rf", pc2, vi) + xp.einsum("ft,rtf->rf", ps2, vr)))
            del v
            dg = dpa.T @ c2_2[mx]  # (R, F2): sum_i w a^2 CTF^2
            wmg = xp.asarray(1.0 / sig2[g], dtype=xp.float32)  # the group's 1 / sigma2: RELION's weighting
            numr += y * wmg
            denr += dg * wmg
            resid[g] += (a2 * dg[:, posx]).sum(0) - 2.0 * (xp.conj(ar) * y[:, posx]).real.sum(0)
        pad_sel[:, sel2] = numr
        padded = cfft2(xp, pad_real(xp, icfft2(xp, pad_sel.reshape(nr, b, bh), b), 2))
        num[k] = gather(xp, padded, t_num, paired=True).sum(0).reshape(-1)
        full_den = xp.zeros((nr, b * bh), dtype=xp.float32)
        full_den[:, sel2] = denr
        den[k] = gather(xp, full_den.reshape(nr, b, bh), t_den, paired=True).sum(0).reshape(-1)
    keep = xp.asarray((shell_map(b) <= e_shell).ravel())
    num, den = num * keep, den * keep
    # per group and shell: sum_h |X|^2 over the whole plane plus the residual correction inside e_shell
    xabs_full = (x_full.real.astype(xp.float64) ** 2 + x_full.imag.astype(xp.float64) ** 2).reshape(c, -1)
    inlier = xp.asarray((~outlier).astype(np.float64))[:, None]  # outliers leave the noise estimate too
    xabs_full = xabs_full * inlier
    smat = xp.asarray(shell_matrix(b))
    noise = _group_sum(xp, xabs_full @ smat, gidx, ng) + resid @ smat[xp.asarray(sel_h)]  # (G, nsh)
    stats = {
        "num": to_host(num).reshape(nk, b, bh), "den": to_host(den).reshape(nk, b, bh),
        "wsum": to_host(wk.astype(xp.float64).sum(0)), "asum": to_host(asum), "noise": to_host(noise),
        "count": to_host(_group_sum(xp, inlier, gidx, ng)[:, 0]),
        "loglik": np.asarray(float(to_host(loglik.sum()))), "n": np.asarray(c),
    }
    return {"particles": part, "stats": stats}


def scale_score(xp: ModuleType, cross: Any, q: Any, srange: tuple[float, float], prec: float) -> tuple[Any, Any]:
    """Per-sample contrast scale ``a`` and score of ``a cross - a^2 q`` under a Gaussian prior
    ``a ~ N(1, 1 / prec)``: ``a = clip((cross + prec) / (2 q + prec), srange)``, score
    ``a cross - a^2 q - prec (a - 1)^2 / 2 - log(1 + 2 q / prec) / 2`` (the last term is the
    Laplace marginal's Occam factor: a class with more power must explain more).  ``prec`` 0: a
    free scale (correlation-like score), no prior."""
    a = xp.clip((cross + prec) / xp.maximum(2 * q + prec, 1e-30), float(srange[0]), float(srange[1]))
    sc = a * cross - a * a * q
    if prec > 0:
        sc = sc - 0.5 * prec * (a - 1) ** 2 - 0.5 * xp.log1p(2 * q / prec)
    return a, sc


def refine_poses(xp: ModuleType, xw: Any, c2w: Any, refs_f: Any, fy: np.ndarray, fx: np.ndarray, b: int,
                 label: np.ndarray, psi0: np.ndarray, shift0: np.ndarray, psi_step: float, offset_step: float,
                 srange: tuple[float, float] | None, prec: float = 0.0,
                 rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Local pose refinement of each particle's best sample (class ``label``), as RELION's adaptive
    oversampling of its significant poses: ``rounds`` passes over the 3 x 3 x 3 grid of in-plane
    angle (deg) and x/y shift (px) at +-1/4, then +-1/8, ... of the coarse steps around the current
    best, keeping the maximum of ``a cross - a^2 q`` (``a`` fitted within ``srange``, else the
    particle weights already hold the scale).  ``xw`` (c, F) = (scaled) CTF X h / sigma2, ``c2w``
    (c, F) = (scaled) CTF^2 h / sigma2, ``refs_f`` padded reference spectra.  Returns (psi, shift)."""
    from cryoframe.backend import to_host

    psi, shift = psi0.copy(), shift0.copy()
    d = np.array([-1.0, 0.0, 1.0])
    dpsi = np.repeat(d, 9)
    dsx, dsy = np.tile(np.repeat(d, 3), 3), np.tile(d, 9)
    fxx, fyy = xp.asarray(fx[None, None, :]), xp.asarray(fy[None, None, :])
    for rnd in range(rounds):
        fine = 0.25 / 2**rnd
        for k in np.unique(label):
            mem = np.nonzero(label == k)[0]
            m = len(mem)
            # 3 angles x 3 x-shifts x 3 y-shifts (flat index 9 i_psi + 3 i_x + i_y): the 3 rotated
            # references and the separable shift phases exp(2 pi i fx sx) exp(2 pi i fy sy), combined
            ang = (psi[mem, None] + fine * psi_step * d[None]).ravel()  # (m * 3,)
            ar = gather(xp, refs_f[int(k)], rotation_sel(xp, b, fy, fx, ang, 2)).reshape(m, 3, -1)
            sx = xp.asarray(shift[mem, 0, None] + fine * offset_step * d[None])[..., None]  # (m, 3, 1)
            sy = xp.asarray(shift[mem, 1, None] + fine * offset_step * d[None])[..., None]
            px = xp.exp(2j * np.pi * fxx * sx / b).astype(xp.complex64)  # (m, 3, F)
            py = xp.exp(2j * np.pi * fyy * sy / b).astype(xp.complex64)
            mx = xp.asarray(mem)
            t = xw[mx][:, None, :] * xp.conj(ar)  # (m, 3, F)
            tx = t[:, :, None, :] * px[:, None, :, :]  # (m, 3 psi, 3 x, F)
            cross = xp.einsum("mpxf,myf->mpxy", tx.real, py.real) - xp.einsum("mpxf,myf->mpxy", tx.imag, py.imag)
            cross = cross.reshape(m, 27)
            q = xp.repeat(0.5 * (c2w[mx][:, None, :] * (ar.real**2 + ar.imag**2)).sum(-1), 9, axis=1)  # (m, 27)
            if srange is not None:
                score = scale_score(xp, cross, q, srange, prec)[1]
            else:
                score = cross - q
            j = to_host(xp.argmax(score, 1))
            psi[mem] += fine * psi_step * dpsi[j]
            shift[mem, 0] += fine * offset_step * dsx[j]
            shift[mem, 1] += fine * offset_step * dsy[j]
    return psi, shift


def _best_scale(xp: ModuleType, xre: Any, c2w: Any, label: np.ndarray, best: np.ndarray, ns: int, rotated: Any,
                pc: Any, ps: Any, srange: tuple[float, float]) -> np.ndarray:
    """Least-squares contrast scale cross / 2q of every particle's best sample (class ``label``,
    flat sample ``best``), clipped to ``srange``."""
    from cryoframe.backend import to_host

    c, nf = c2w.shape
    out = np.ones(c, dtype=np.float32)
    for k in np.unique(label):
        mem = np.nonzero(label == k)[0]
        ar = rotated(int(k))[xp.asarray(best[mem] // ns)]  # (m, F)
        t = xp.asarray(best[mem] % ns)
        pcm, psm = pc[:, t].T, ps[:, t].T  # (m, F)
        col_re = ar.real * pcm + ar.imag * psm
        col_im = ar.real * psm - ar.imag * pcm
        mx = xp.asarray(mem)
        cross = (xre[mx, :nf] * col_re + xre[mx, nf:] * col_im).sum(1)
        q = 0.5 * (c2w[mx] * (ar.real**2 + ar.imag**2)).sum(1)
        out[mem] = to_host(xp.clip(cross / xp.maximum(2 * q, 1e-30), float(srange[0]), float(srange[1])))
    return out


def estep_task(images: Any, ctf_params: dict[str, Any] | None, groups: Any, scales: Any, model: dict[str, Any],
               device: str, need_stats: bool) -> dict[str, dict[str, np.ndarray]]:
    """:func:`estep_partition` with the array module named by ``device`` (for dask tasks);
    ``scales`` per-particle contrast scales or None (see ``scale_mode`` of the model)."""
    from cryoframe.backend import get_array_module

    return estep_partition(images, ctf_params, model, get_array_module(device), need_stats, groups,
                           scales=scales if model.get("scale_mode", "particle") == "particle" else None)


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
