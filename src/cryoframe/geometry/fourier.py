"""Fourier central slices: projection (extraction) and back-projection (insertion) on a padded grid.

Grids and layouts (all arrays NumPy or CuPy, chosen by the ``xp`` argument):

* Images are ``(..., b, b)`` indexed ``[y, x]``, volumes ``[z, y, x]``; the centre of a box of
  ``b`` px is pixel ``b // 2`` on every axis, and it is the phase origin of every transform
  (``rfftn(ifftshift(x))``), so a centred object has a real transform.
* Image transforms are the half plane of ``rfft2``: ``(b, b // 2 + 1)``, row frequency
  ``ky = fftfreq(b) * b``, column ``kx = 0 .. b // 2`` (cycles per box).
* 3D transforms live on the half grid ``(P, P, P // 2 + 1)`` of a volume zero-padded to
  ``P = pad * b`` (``pad = 2`` as RELION).  Image frequency ``k`` (cycles per ``b``) meets 3D
  frequency ``pad * R @ (kx, ky, 0)`` (cycles per ``P``) with ``R`` the pose matrix of
  :mod:`cryoframe.geometry.rotations`; points with negative x take the complex conjugate of their
  mirror (Hermitian symmetry of a real volume).
* Interpolation is trilinear on the padded grid, both ways.  Its real-space effect is a product of
  ``sinc^2(pi x / P)`` over the three axes (x px from the centre), which :func:`gridding_correction`
  divides out: from the volume before a projector is built, and from the reconstruction after the
  inverse transform (RELION's ``griddingCorrect`` for trilinear interpolation uses the radial
  ``sinc^2``; the separable product here is the exact transform of the trilinear kernel).
* Only frequencies within ``r_max`` (default ``b / 2``, Nyquist) are projected or inserted;
  image frequencies beyond it are zero (as RELION's projector).
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["band_box", "cfft2", "cfftn", "enforce_hermitian", "extract_slices", "fourier_crop", "gridding_correction",
           "icfft2", "icfftn", "image_freqs", "insert_images", "insert_slices", "new_sums", "pad_volume", "phase_shift",
           "project_volume", "resample_volume", "sums_shape", "volume_transform"]


def _fft(xp: ModuleType) -> Any:
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft


def cfft2(img: Any, xp: ModuleType = np) -> Any:
    """Centred-origin half-plane transform of real images ``(..., b, b)`` -> ``(..., b, b // 2 + 1)``."""
    return _fft(xp).rfft2(xp.fft.ifftshift(img, axes=(-2, -1)), axes=(-2, -1))


def icfft2(f: Any, box: int, xp: ModuleType = np) -> Any:
    """Inverse of :func:`cfft2`: real images ``(..., box, box)``."""
    return xp.fft.fftshift(_fft(xp).irfft2(f, s=(box, box), axes=(-2, -1)), axes=(-2, -1))


def cfftn(vol: Any, xp: ModuleType = np) -> Any:
    """Centred-origin half transform of a real ``[z, y, x]`` volume -> ``(n, n, n // 2 + 1)``."""
    return _fft(xp).rfftn(xp.fft.ifftshift(vol), axes=(0, 1, 2))


def icfftn(f: Any, box: int, xp: ModuleType = np) -> Any:
    """Inverse of :func:`cfftn`: a real ``(box, box, box)`` volume."""
    return xp.fft.fftshift(_fft(xp).irfftn(f, s=(box, box, box), axes=(0, 1, 2)))


def pad_volume(vol: Any, size: int, xp: ModuleType = np) -> Any:
    """Zero-pad a cubic volume to ``size`` keeping its centre voxel (``b // 2`` -> ``size // 2``)."""
    b = vol.shape[0]
    o = size // 2 - b // 2
    out = xp.zeros((size, size, size), dtype=vol.dtype)
    out[o:o + b, o:o + b, o:o + b] = vol
    return out


def band_box(box: int, psize_A: float, resolution_A: float | None, minimum: int = 16) -> int:
    """The even box (at most ``box``, at least ``minimum``) whose Nyquist is at most ``resolution_A``:
    a Fourier crop to it (:func:`fourier_crop`) keeps every frequency up to that resolution (the
    input box when ``resolution_A`` is None)."""
    if resolution_A is None:
        return box
    b = int(math.ceil(2.0 * box * psize_A / resolution_A - 1e-9))
    b += b % 2
    return int(min(box, max(b, minimum)))


def fourier_crop(images: np.ndarray, box_out: int) -> np.ndarray:
    """Real images (n, b, b) resampled to (n, box_out, box_out) by cropping their centred transforms
    (pixel size grows by ``b / box_out``; values keep their real-space amplitude)."""
    b = images.shape[-1]
    if box_out == b:
        return np.asarray(images, dtype=np.float32)
    f = cfft2(np.asarray(images, dtype=np.float32))
    ky = (np.rint(np.fft.fftfreq(box_out) * box_out).astype(int)) % b
    g = f[:, ky, : box_out // 2 + 1]
    return (icfft2(g, box_out) * (box_out / b) ** 2).astype(np.float32)


def resample_volume(vol: np.ndarray, box_out: int) -> np.ndarray:
    """A cubic volume resampled to ``box_out`` by cropping (or zero-padding) its centred transform."""
    b = vol.shape[0]
    if b == box_out:
        return np.asarray(vol, dtype=np.float32)
    f = cfftn(np.asarray(vol, dtype=np.float64))
    k = np.rint(np.fft.fftfreq(box_out) * box_out).astype(int)
    if box_out < b:
        g = f[np.ix_(k % b, k % b, np.arange(box_out // 2 + 1))]
    else:
        g = np.zeros((box_out, box_out, box_out // 2 + 1), dtype=f.dtype)
        kb = np.rint(np.fft.fftfreq(b) * b).astype(int)
        g[np.ix_(kb % box_out, kb % box_out, np.arange(b // 2 + 1))] = f
    return (icfftn(g, box_out) * (box_out / b) ** 3).astype(np.float32)


def gridding_correction(box: int, pad: int = 2, xp: ModuleType = np) -> Any:
    """``sinc^2(pi x / P)`` products (box, box, box) float64 (x px from the centre, ``P = pad * box``):
    the real-space attenuation of trilinear interpolation on the padded grid (cached, read-only)."""
    return xp.asarray(_gridding_correction(box, pad))


@lru_cache(maxsize=8)
def _gridding_correction(box: int, pad: int) -> np.ndarray:
    x = (np.arange(box) - box // 2) / (pad * box)
    s2 = np.sinc(x) ** 2  # numpy's sinc is sin(pi x)/(pi x)
    out = s2[:, None, None] * s2[None, :, None] * s2[None, None, :]
    out.flags.writeable = False
    return out


def volume_transform(vol: Any, pad: int = 2, xp: ModuleType = np) -> Any:
    """The projector's grid: the half transform (P, P, P // 2 + 1) complex64 of ``vol`` (b^3, [z, y, x])
    divided by the gridding correction and zero-padded to ``P = pad * b``."""
    b = vol.shape[0]
    v = xp.asarray(vol, dtype=xp.float64) / gridding_correction(b, pad, xp)
    return cfftn(pad_volume(v, pad * b, xp), xp).astype(xp.complex64)


def image_freqs(box: int, r_max: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-plane frequencies within ``r_max`` (cycles per box; default ``box / 2``).

    Returns ``kx``, ``ky`` (m,) float64 and ``flat`` (m,) int64: their index in a raveled
    ``(box, box // 2 + 1)`` array.
    """
    r_max = box / 2 if r_max is None else r_max
    ky = np.rint(np.fft.fftfreq(box) * box)[:, None]
    kx = np.arange(box // 2 + 1, dtype=np.float64)[None, :]
    ky, kx = np.broadcast_arrays(ky, kx)
    keep = (kx * kx + ky * ky) <= r_max * r_max + 1e-9
    flat = np.flatnonzero(keep.ravel())
    return kx.ravel()[flat].copy(), ky.ravel()[flat].copy(), flat


def phase_shift(box: int, shifts: Any, xp: ModuleType = np) -> Any:
    """(n, box, box // 2 + 1) complex64 factors that translate images by ``shifts`` (n, 2) px (x, y)."""
    ky = xp.asarray(np.fft.fftfreq(box))[:, None]
    kx = xp.asarray(np.fft.rfftfreq(box))[None, :]
    s = xp.asarray(shifts, dtype=xp.float64)
    ph = -2.0 * math.pi * (s[:, 0, None, None] * kx + s[:, 1, None, None] * ky)
    return (xp.cos(ph) + 1j * xp.sin(ph)).astype(xp.complex64)


def _corners(rot: Any, kx: Any, ky: Any, pad: int, size: int, xp: ModuleType) -> tuple[list[tuple[Any, Any]], Any]:
    """Trilinear corners of the 3D points ``pad * R (kx, ky, 0)`` on the half grid of ``size``.

    Returns ``[(flat index (n, m), weight (n, m)), ...]`` for the 8 corners and the mask (n, m) of
    points that were mirrored to x >= 0 (their values are complex conjugates).
    """
    r = xp.asarray(rot, dtype=xp.float64) * pad
    # q[..., c] = kx * R[c, 0] + ky * R[c, 1]   (c = x, y, z)
    qx = r[:, 0, 0, None] * kx + r[:, 0, 1, None] * ky
    qy = r[:, 1, 0, None] * kx + r[:, 1, 1, None] * ky
    qz = r[:, 2, 0, None] * kx + r[:, 2, 1, None] * ky
    neg = qx < 0
    sgn = xp.where(neg, -1.0, 1.0)
    qx, qy, qz = qx * sgn, qy * sgn, qz * sgn
    x0, y0, z0 = xp.floor(qx), xp.floor(qy), xp.floor(qz)
    fx, fy, fz = qx - x0, qy - y0, qz - z0
    x0, y0, z0 = x0.astype(xp.int64), y0.astype(xp.int64), z0.astype(xp.int64)
    hx = size // 2 + 1
    out = []
    for dz in (0, 1):
        wz = fz if dz else 1.0 - fz
        iz = (z0 + dz) % size
        for dy in (0, 1):
            wzy = wz * (fy if dy else 1.0 - fy)
            izy = (iz * size + (y0 + dy) % size) * hx
            for dx in (0, 1):
                w = wzy * (fx if dx else 1.0 - fx)
                ix = xp.minimum(x0 + dx, hx - 1)  # x0 + 1 past the grid only when fx == 0
                out.append((izy + ix, w))
    return out, neg


def _use_numba(xp: ModuleType, method: str) -> bool:
    if method not in ("auto", "numba", "xp"):
        raise ValueError(f"method must be auto, numba or xp (got {method!r})")
    from cryoframe.geometry import _kernels

    if method == "numba" and (xp is not np or not _kernels.HAVE_NUMBA):
        raise ValueError("the numba kernels need NumPy arrays and numba")
    return xp is np and _kernels.HAVE_NUMBA and method != "xp"


def extract_slices(vft: Any, rot: Any, box: int, pad: int = 2, r_max: float | None = None,
                   xp: ModuleType = np, method: str = "auto") -> Any:
    """Central slices (n, box, box // 2 + 1) complex64 of a projector grid ``vft``
    (:func:`volume_transform`) at pose matrices ``rot`` (n, 3, 3): the transforms of the projections.

    ``method``: ``"numba"`` (compiled CPU loop), ``"xp"`` (vectorised NumPy/CuPy) or ``"auto"``.
    """
    kx, ky, flat = image_freqs(box, r_max)
    acc = extract_at(vft, rot, kx, ky, pad, xp, method)
    out = xp.zeros((acc.shape[0], box * (box // 2 + 1)), dtype=xp.complex64)
    out[:, xp.asarray(flat)] = acc
    return out.reshape(-1, box, box // 2 + 1)


def extract_at(vft: Any, rot: Any, kx: np.ndarray, ky: np.ndarray, pad: int = 2, xp: ModuleType = np,
               method: str = "auto") -> Any:
    """The central slices of :func:`extract_slices` at the half-plane frequencies ``kx``, ``ky`` (m,)
    (cycles per box, ``kx >= 0``) only: (n, m) complex64, without the full transforms."""
    kx, ky = np.asarray(kx, dtype=np.float64), np.asarray(ky, dtype=np.float64)
    if _use_numba(xp, method):
        from cryoframe.geometry import _kernels

        return _kernels.extract(np.ascontiguousarray(vft.real, dtype=np.float32),
                                np.ascontiguousarray(vft.imag, dtype=np.float32),
                                np.asarray(rot, dtype=np.float64) * pad, kx, ky)
    corners, neg = _corners(rot, xp.asarray(kx), xp.asarray(ky), pad, vft.shape[0], xp)
    g = vft.ravel()
    acc = None
    for idx, w in corners:
        v = g[idx] * w
        acc = v if acc is None else acc + v
    return xp.where(neg, xp.conj(acc), acc).astype(xp.complex64)


def insert_images(acc: np.ndarray, rots: np.ndarray, kx: np.ndarray, ky: np.ndarray, flat: np.ndarray,
                  images: np.ndarray, params: tuple[np.ndarray, ...]) -> None:
    """Transform the real ``images`` (n, b, b) (:func:`cfft2`) and insert them at every pose set of
    ``rots`` (nsym, n, 3, 3, times the padding) with the compiled loop
    (:func:`cryoframe.geometry._kernels.run_insert_ctf`, ``params`` from its ``insert_ctf_params``):
    one batch of a partition, in this process or in the kernel worker's."""
    from cryoframe.geometry import _kernels

    f = cfft2(images)
    for r in rots:
        _kernels.run_insert_ctf(acc, r, kx, ky, flat, f, params)


def sums_shape(box: int, pad: int = 2) -> tuple[int, int, int, int]:
    """Shape (P, P, P // 2 + 1, 3) of the padded half-grid sums, P = pad * box."""
    size = pad * box
    return (size, size, size // 2 + 1, 3)


def new_sums(box: int, pad: int = 2, xp: ModuleType = np, dtype: Any = None) -> Any:
    """Zeroed Fourier sums (P, P, P // 2 + 1, 3) (default float64), the last axis (data real, data
    imaginary, weight) interleaved so that a trilinear corner touches one cache line."""
    return xp.zeros(sums_shape(box, pad), dtype=dtype or xp.float64)


def insert_slices(sums: Any, rot: Any, fimg: Any, ctf: Any | None, wts: Any | None, box: int,
                  pad: int = 2, r_max: float | None = None, xp: ModuleType = np, method: str = "auto") -> None:
    """Add CTF-weighted slices to the padded half-grid sums in place (trilinear insertion):
    ``data += sum w CTF F`` (complex, as real and imaginary grids) and ``weight += sum w CTF^2``.

    ``sums`` from :func:`new_sums`; ``rot`` (n, 3, 3) pose matrices; ``fimg`` (n, box, box // 2 + 1)
    image transforms (:func:`cfft2`, already centred by their shifts); ``ctf`` the same shape real,
    or None (CTF = 1); ``wts`` (n,) per-particle weights or None.  ``method`` as
    :func:`extract_slices`; the vectorised path uses ``bincount`` over flattened indices.
    """
    size = sums.shape[0]
    kx, ky, flat = image_freqs(box, r_max)
    n = fimg.shape[0]
    if _use_numba(xp, method):
        from cryoframe.geometry import _kernels

        w = np.ones(n) if wts is None else np.asarray(wts, dtype=np.float64)
        _kernels.insert(sums, np.asarray(rot, dtype=np.float64) * pad, kx, ky, flat, fimg, ctf, w)
        return
    fl = xp.asarray(flat)
    f = fimg.reshape(n, -1)[:, fl]
    c = xp.ones(f.shape, dtype=xp.float64) if ctf is None else ctf.reshape(n, -1)[:, fl].astype(xp.float64)
    if wts is not None:
        c2 = c * c * xp.asarray(wts, dtype=xp.float64)[:, None]
        c = c * xp.asarray(wts, dtype=xp.float64)[:, None]
    else:
        c2 = c * c
    cf = f * c
    corners, neg = _corners(rot, xp.asarray(kx), xp.asarray(ky), pad, size, xp)
    cf = xp.where(neg, xp.conj(cf), cf)
    idx = xp.concatenate([i.ravel() for i, _ in corners])
    w = xp.concatenate([w.ravel() for _, w in corners])
    ncell = sums[..., 0].size
    for ch, v in enumerate((cf.real, cf.imag, c2)):
        sums[..., ch] += xp.bincount(idx, weights=xp.concatenate([v.ravel()] * 8) * w,
                                     minlength=ncell).reshape(sums.shape[:3])


def enforce_hermitian(sums: Any, xp: ModuleType = np) -> None:
    """Complete the x = 0 plane of half-grid sums in place: insertion only writes the x >= 0 member of
    each Hermitian pair, so the plane gets ``a(y, z) + conj(a(-y, -z))`` (weights: the plain sum)."""
    p = sums[:, :, 0, :]
    m = xp.roll(xp.flip(p, axis=(0, 1)), 1, axis=(0, 1))
    m[..., 1] *= -1.0
    sums[:, :, 0, :] = p + m


def project_volume(vol: Any, rot: Any, pad: int = 2, xp: ModuleType = np) -> Any:
    """Real-space projections (n, b, b) float32 of a ``[z, y, x]`` volume at pose matrices ``rot``."""
    b = vol.shape[0]
    f = extract_slices(volume_transform(vol, pad, xp), rot, b, pad, xp=xp)
    return icfft2(f, b, xp).astype(xp.float32)
