"""Image-formation helpers for synthetic data: CTF, rotations, Gaussian-blob objects, projection.

Conventions (shared by everything in :mod:`cryoframe.synthetic`; :mod:`cryoframe.testing` re-exports
the CTF and projection helpers):

* Images are ``(..., ny, nx)`` arrays indexed ``[y, x]``; volumes ``[z, y, x]``.  The centre of
  a box of ``b`` pixels is pixel ``b // 2`` on every axis; coordinates ``(x, y[, z])`` are in px
  relative to that centre.
* Rotations act on coordinates: the image of an object ``T`` in pose ``R`` is
  ``I(p) = T(R p)``; a 3D projection is ``P(x, y) = sum_z V(R (x, y, z))`` with
  ``R = Rotation.from_rotvec(pose).as_matrix()`` (cryoSPARC rotation vector, rad).  A 2D in-plane
  angle ``theta`` (rad) is the same as the rotation vector ``(0, 0, theta)``.
* A shift ``s = (sx, sy)`` px moves the particle centre to ``b // 2 + s``.
* Fourier arrays use the unshifted FFT layout (DC at ``[0, 0]``); with ``rfft=True`` the last axis
  is the half axis of ``numpy.fft.rfft2`` (shape ``(b, b // 2 + 1)``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation

# the one CTF of cryoframe; ctf_at and electron_wavelength_A are re-exported here for the tests
from cryoframe.geometry.ctf import CTF_PARAMS, ctf_at, ctf_grid, electron_wavelength_A

__all__ = [
    "apply_ctf",
    "blob_model",
    "ctf_2d",
    "ctf_at",
    "electron_wavelength_A",
    "freq_grid",
    "project",
    "project_blobs",
    "render_blobs",
    "render_blobs_3d",
    "rot2d",
]


def freq_grid(box: int, psize_A: float, rfft: bool = True) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Spatial frequencies ``(sx, sy)`` in 1/Å of a ``box`` px image, broadcastable to the FFT shape.

    ``sx`` varies along the last (x, column) axis, ``sy`` along rows; unshifted layout, the
    half-plane of ``rfft2`` when ``rfft`` (shape ``(box, box // 2 + 1)``), else ``(box, box)``.
    """
    sx = ((np.fft.rfftfreq(box) if rfft else np.fft.fftfreq(box)) / psize_A).astype(np.float64, copy=False)
    sy = (np.fft.fftfreq(box) / psize_A).astype(np.float64, copy=False)
    return sx[None, :], sy[:, None]


def ctf_2d(
    box: int,
    psize_A: float,
    df1_A: ArrayLike,
    df2_A: ArrayLike,
    df_angle_rad: ArrayLike,
    accel_kv: ArrayLike,
    cs_mm: ArrayLike,
    amp_contrast: ArrayLike,
    phase_shift_rad: ArrayLike = 0.0,
    rfft: bool = True,
) -> NDArray[np.float32]:
    """CTF on the FFT grid of a ``box`` px image with pixel size ``psize_A`` (Å/px).

    Returns the **rfft2-shaped** array ``(*batch, box, box // 2 + 1)`` (unshifted, DC at
    ``[..., 0, 0]``), or the full ``fft2`` shape ``(*batch, box, box)`` when ``rfft=False``.
    ``batch`` is the broadcast shape of the per-particle parameters (e.g. ``(n,)`` for arrays of
    ``n`` defoci; ``()`` for scalars).  Computed by :func:`cryoframe.geometry.ctf.ctf_grid` (the
    one CTF; see :mod:`cryoframe.geometry.ctf` for the formula and sign).
    """
    params = np.broadcast_arrays(*(np.asarray(p, dtype=np.float64) for p in
                                   (df1_A, df2_A, df_angle_rad, accel_kv, cs_mm, amp_contrast, phase_shift_rad)))
    grid = ctf_grid(box, psize_A, dict(zip(CTF_PARAMS, params, strict=True)), rfft=rfft)
    return np.asarray(grid, dtype=np.float32).reshape(*params[0].shape, *grid.shape[-2:])


def apply_ctf(images: NDArray[np.floating], ctf: NDArray[np.floating]) -> NDArray[np.float32]:
    """Multiply ``images`` (..., b, b) by an rfft2-shaped ``ctf`` in Fourier space (circular)."""
    b = images.shape[-1]
    f = scipy.fft.rfft2(np.asarray(images, dtype=np.float32), axes=(-2, -1))
    return scipy.fft.irfft2(f * ctf, s=(images.shape[-2], b), axes=(-2, -1)).astype(np.float32)


def rot2d(theta: ArrayLike) -> NDArray[np.float64]:
    """(..., 2, 2) matrices ``[[cos, -sin], [sin, cos]]`` of in-plane angles ``theta`` (rad)."""
    t = np.asarray(theta, dtype=np.float64)
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _grid(box: int) -> NDArray[np.float64]:
    return np.arange(box, dtype=np.float64) - box // 2


def render_blobs(centers: NDArray, precisions: NDArray, amps: NDArray, box: int,
                 max_elems: int = 1 << 23) -> NDArray[np.float32]:
    """Sum of 2D Gaussians ``a exp(-1/2 d^T P d)`` on a ``box`` px grid.

    ``centers`` (n, m, 2) px (x, y) from the box centre, ``precisions`` (n, m, 2, 2) in 1/px^2,
    ``amps`` (n, m).  Returns (n, box, box) float32; evaluated in chunks of bounded size.
    """
    n, m = amps.shape
    g = _grid(box)
    out = np.empty((n, box, box), dtype=np.float32)
    step = max(1, max_elems // max(1, m * box * box))
    for i in range(0, n, step):
        c = centers[i : i + step]
        p = precisions[i : i + step]
        dx = g[None, None, None, :] - c[..., 0, None, None]
        dy = g[None, None, :, None] - c[..., 1, None, None]
        q = (p[..., 0, 0, None, None] * dx * dx + 2.0 * p[..., 0, 1, None, None] * dx * dy
             + p[..., 1, 1, None, None] * dy * dy)
        out[i : i + step] = np.einsum("nm,nmyx->nyx", amps[i : i + step], np.exp(-0.5 * q))
    return out


def render_blobs_3d(centers: NDArray, precisions: NDArray, amps: NDArray, box: int) -> NDArray[np.float32]:
    """Sum of 3D Gaussians on a ``box``^3 grid indexed ``[z, y, x]``; ``centers`` (m, 3) px (x, y, z)."""
    g = _grid(box)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((box, box, box), dtype=np.float64)
    for c, p, a in zip(centers, precisions, amps, strict=True):
        if a == 0:
            continue
        d = np.stack([x - c[0], y - c[1], z - c[2]], axis=-1)
        vol += a * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, p, d))
    return vol.astype(np.float32)


def project_blobs(
    centers: NDArray, precisions: NDArray, amps: NDArray, rotmats: NDArray, shifts: NDArray | None = None
) -> tuple[NDArray, NDArray, NDArray]:
    """Exact images of Gaussian-blob objects in poses ``rotmats``, as 2D blob parameters.

    ``centers`` (n, m, D), ``precisions`` (n, m, D, D), ``amps`` (n, m) with D = 2 (in-plane
    rotation, ``rotmats`` (n, 2, 2)) or D = 3 (projection along z after rotation, ``rotmats``
    (n, 3, 3), amplitudes integrated along z in px).  ``shifts`` (n, 2) px move the centres.
    Returns (centers (n, m, 2), precisions (n, m, 2, 2), amps (n, m)) for :func:`render_blobs`.
    """
    r = np.asarray(rotmats, dtype=np.float64)
    c = np.einsum("nji,nmj->nmi", r, centers)  # R^T mu
    p = np.einsum("nji,nmjk,nkl->nmil", r, precisions, r)  # R^T P R
    a = np.asarray(amps, dtype=np.float64)
    if c.shape[-1] == 3:  # marginalise z: Schur complement of the zz precision
        pzz = p[..., 2, 2]
        pxz = p[..., :2, 2]
        p = p[..., :2, :2] - pxz[..., :, None] * pxz[..., None, :] / pzz[..., None, None]
        a = a * np.sqrt(2.0 * np.pi / pzz)
        c = c[..., :2]
    if shifts is not None:
        c = c + np.asarray(shifts, dtype=np.float64)[:, None, :]
    return c, p, a


def project(volume: NDArray[np.floating], rotmats: ArrayLike, order: int = 1) -> NDArray[np.float32]:
    """Real-space projections ``P(x, y) = sum_z V(R (x, y, z))`` of a ``[z, y, x]`` volume.

    ``rotmats`` (n, 3, 3) or (3, 3) act on (x, y, z) px coordinates about the box centre;
    ``R = Rotation.from_rotvec(pose).as_matrix()``.  Trilinear interpolation (``order``),
    zero outside the box.  Returns (n, b, b) float32 (or (b, b) for a single matrix).
    """
    vol = np.asarray(volume, dtype=np.float32)
    rm = np.asarray(rotmats, dtype=np.float64)
    single = rm.ndim == 2
    rm = rm.reshape(-1, 3, 3)
    b = vol.shape[0]
    g = _grid(b)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()])
    out = np.empty((len(rm), b, b), dtype=np.float32)
    for i, r in enumerate(rm):
        q = r @ pts + b // 2
        vals = ndimage.map_coordinates(vol, [q[2], q[1], q[0]], order=order, mode="constant", cval=0.0)
        out[i] = vals.reshape(b, b, b).sum(axis=0)
    return out[0] if single else out


# -- random blob objects ---------------------------------------------------------------------------
def _random_blobs(g: np.random.Generator, box: int, dim: int, mmax: int) -> tuple[np.ndarray, ...]:
    m = int(g.integers(3 if dim == 2 else 4, mmax + 1))
    d = g.normal(size=(m, dim))
    c = d / np.linalg.norm(d, axis=1, keepdims=True) * (0.2 * box * g.random((m, 1)) ** (1 / dim))
    sig = g.uniform(0.03, 0.07, (m, dim)) * box
    q = rot2d(g.uniform(0, np.pi, m)) if dim == 2 else Rotation.random(m, random_state=g).as_matrix()
    p = np.einsum("mij,mj,mkj->mik", q, 1.0 / sig**2, q)
    a = g.uniform(0.6, 1.0, m)
    mass = a * np.prod(sig, axis=1)
    c -= (mass[:, None] * c).sum(0) / mass.sum()  # centre of mass at the box centre
    pad = mmax - m
    return (np.concatenate([c, np.zeros((pad, dim))]), np.concatenate([p, np.tile(np.eye(dim), (pad, 1, 1))]),
            np.concatenate([a, np.zeros(pad)]))


def _rms(c: np.ndarray, p: np.ndarray, a: np.ndarray, box: int) -> float:
    """Exact RMS over the box of a blob sum (blobs well inside the box)."""
    dim = c.shape[1]
    cov = np.linalg.inv(p)
    s = cov[:, None] + cov[None, :]
    delta = c[:, None] - c[None, :]
    quad = np.einsum("ijk,ijkl,ijl->ij", delta, np.linalg.inv(s), delta)
    dets = np.linalg.det(cov)
    overlap = (2 * np.pi) ** (dim / 2) * np.sqrt(dets[:, None] * dets[None, :] / np.linalg.det(s)) * np.exp(-0.5 * quad)
    return float(np.sqrt(a @ overlap @ a / box**dim))


@lru_cache(maxsize=8)
def blob_model(k: int, box: int, seed: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters of ``k`` random unit-RMS objects made of anisotropic Gaussian blobs (cached).

    Returns read-only centres (k, m, dim) px (x, y[, z]) from the box centre, precisions
    (k, m, dim, dim) 1/px^2 and amplitudes (k, m) (zero for padding).  2D objects (``dim=2``) have
    3-6 blobs and no two correlate above 0.85 under any in-plane rotation; 3D ones have 4-8.
    """
    mmax = 6 if dim == 2 else 8
    out: list[tuple[np.ndarray, ...]] = []
    refs: list[np.ndarray] = []
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    for j in range(k):
        for attempt in range(50):
            c, p, a = _random_blobs(np.random.default_rng(np.random.SeedSequence([seed, 3, dim, j, attempt])), box, dim, mmax)
            if dim == 3 or not refs:
                break
            # 2D: reject a template within 0.85 correlation of a rotated earlier one
            cc, pp, aa = project_blobs(np.repeat(c[None], 36, 0), np.repeat(p[None], 36, 0),
                                       np.repeat(a[None], 36, 0), rot2d(angles))
            rot = render_blobs(cc, pp, aa, box).reshape(36, -1)
            rot = rot - rot.mean(1, keepdims=True)
            rot /= np.linalg.norm(rot, axis=1, keepdims=True)
            if max(float(np.max(rot @ r)) for r in refs) < 0.85:
                break
        a = a / _rms(c, p, a, box)
        out.append((c, p, a))
        if dim == 2:
            r = render_blobs(c[None], p[None], a[None], box).ravel()
            refs.append((r - r.mean()) / np.linalg.norm(r - r.mean()))
    cs, ps, as_ = (np.stack(x) for x in zip(*out, strict=True))
    for x in (cs, ps, as_):
        x.flags.writeable = False
    return cs, ps, as_
