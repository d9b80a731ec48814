"""Initial class averages for Class2D: random subsets, or EMAN2-style MSA of invariants; re-seeding.

* ``random``: each initial average is the CTF-corrected (Wiener-like, unaligned) mean of a random
  subset of :data:`INIT_SUBSET` particles.
* ``msa`` (EMAN2 ``e2refine2d``-like): per particle a rotation- and translation-invariant feature
  vector (the angular power spectrum of the CTF-weighted Fourier amplitude in polar coordinates),
  PCA to ``nbasis`` components and seeded k-means into ``K`` groups; initial averages are the means
  of the :data:`INIT_SUBSET` members nearest to each cluster centre (CTF-corrected as above).
* :func:`split_class` splits a class in two (MSA of its aligned members), to re-seed empty classes.

The per-partition functions take ``xp`` (NumPy or CuPy) and return host arrays.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from cryoframe.algorithms.class2d.estep import (
    bilinear_table,
    cfft2,
    ctf_half,
    gather,
    half_weights,
    icfft2,
    pad_real,
    rotation_table,
    shell_map,
)

__all__ = ["INIT_SUBSET", "MSA_SAMPLE", "align_images", "init_partition", "init_task", "msa_features",
           "msa_groups", "msa_task", "similar_pairs", "split_class"]

MSA_SAMPLE = 20_000
"""At most this many particles (a seeded random sample) enter the MSA and k-means."""

INIT_SUBSET = 5
"""Particles per initial average.  Small subsets keep the initial references asymmetric: averages of
many randomly rotated particles are rotationally symmetric blobs, a fixed point of the alignment."""

_WIENER = 0.1  # constant added to CTF^2 when correcting the unaligned initial averages


def init_partition(images: Any, ctf_params: dict[str, Any] | None, groups: np.ndarray, n_groups: int,
                   mask: np.ndarray, psize_A: float, xp: ModuleType = np) -> dict[str, np.ndarray]:
    """Group sums of one partition: ``num`` (G, b, bh) = sum CTF X, ``den`` (G, b, bh) = sum CTF^2,
    ``count`` (G,) (``groups`` < 0: in no group), and ``pow`` (b, bh) = sum |X|^2, ``sum`` = sum X
    over every particle (for the initial noise spectrum).  X: masked images, centred-origin FFT.
    """
    from cryoframe.backend import to_host

    b = images.shape[-1]
    x = cfft2(xp, xp.asarray(images, dtype=xp.float32) * xp.asarray(mask, dtype=xp.float32))
    c = x.shape[0]
    nf = b * (b // 2 + 1)
    g = np.asarray(groups)
    onehot = np.zeros((n_groups, c), dtype=np.float32)
    ok = g >= 0
    onehot[g[ok], np.nonzero(ok)[0]] = 1.0
    oh = xp.asarray(onehot)
    if ctf_params is not None:
        ctf = ctf_half(xp, b, psize_A, ctf_params)
        cx, c2 = x * ctf, (ctf * ctf).reshape(c, nf)
    else:
        cx, c2 = x, xp.ones((c, nf), dtype=xp.float32)
    num = to_host(oh.astype(xp.complex64) @ cx.reshape(c, nf)).astype(np.complex128)
    return {
        "num": num.reshape(n_groups, b, -1),
        "den": to_host(oh @ c2).astype(np.float64).reshape(n_groups, b, -1),
        "count": onehot.sum(1).astype(np.float64),
        "pow": to_host((x.real**2 + x.imag**2).astype(xp.float64).sum(0)),
        "sum": to_host(x.astype(xp.complex128).sum(0)),
    }


def init_task(images: Any, ctf_params: dict[str, Any] | None, groups: np.ndarray, n_groups: int,
              mask: np.ndarray, psize_A: float, device: str) -> dict[str, np.ndarray]:
    from cryoframe.backend import get_array_module

    return init_partition(images, ctf_params, groups, n_groups, mask, psize_A, get_array_module(device))


def wiener_init(num: np.ndarray, den: np.ndarray, count: np.ndarray, ctf: bool) -> np.ndarray:
    """Unaligned CTF-corrected group means (G, b, bh) from :func:`init_partition` sums."""
    reg = _WIENER * count[:, None, None] if ctf else 0.0
    return num / np.maximum(den + reg, 1e-12)


def msa_features(images: Any, ctf_params: dict[str, Any] | None, mask: np.ndarray, psize_A: float,
                 max_shell: int, n_angles: int = 32, xp: ModuleType = np) -> np.ndarray:
    """Rotation/translation-invariant features (c, max_shell * (n_angles // 2 + 1)) float32.

    ``|X| |CTF| / (CTF^2 + 0.1)`` (translation invariant; roughly CTF-corrected) is sampled on a
    polar grid of radii 1..``max_shell`` px^-1 and ``n_angles`` angles over [0, pi) (the amplitude
    is centrosymmetric); the magnitudes of its Fourier series along the angle are invariant to
    in-plane rotation.  ``log1p`` compresses the dynamic range.
    """
    from cryoframe.backend import to_host

    b = images.shape[-1]
    x = cfft2(xp, xp.asarray(images, dtype=xp.float32) * xp.asarray(mask, dtype=xp.float32))
    amp = xp.abs(x)
    if ctf_params is not None:
        ctf = ctf_half(xp, b, psize_A, ctf_params)
        amp = amp * xp.abs(ctf) / (ctf * ctf + _WIENER)
    r = np.arange(1, max_shell + 1, dtype=np.float64)[:, None]
    a = np.pi * np.arange(n_angles) / n_angles
    idx, w, _ = bilinear_table(xp, xp.asarray(r * np.cos(a)[None]), xp.asarray(r * np.sin(a)[None]), b)
    polar = (amp.reshape(amp.shape[0], -1)[:, idx] * w).sum(-1)  # (c, radii, angles); |X| is even
    harm = xp.abs(xp.fft.rfft(polar, axis=-1))
    return to_host(xp.log1p(harm).reshape(amp.shape[0], -1)).astype(np.float32)


def msa_task(images: Any, ctf_params: dict[str, Any] | None, mask: np.ndarray, psize_A: float,
             max_shell: int, device: str) -> np.ndarray:
    from cryoframe.backend import get_array_module

    return msa_features(images, ctf_params, mask, psize_A, max_shell, xp=get_array_module(device))


def msa_groups(features: np.ndarray, n_classes: int, nbasis: int, seed: int | None,
               per_class: int) -> np.ndarray:
    """Standardise, PCA to ``nbasis`` components, seeded k-means into ``n_classes`` clusters; returns
    (m,) the cluster of the ``per_class`` members nearest to each cluster centre, -1 for the rest."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(features.astype(np.float64))
    nb = max(1, min(nbasis, z.shape[1], z.shape[0] - 1))
    y = PCA(n_components=nb, svd_solver="full").fit_transform(z)
    km = KMeans(n_clusters=n_classes, n_init=10, random_state=seed).fit(y)
    dist = km.transform(y)
    out = np.full(len(y), -1, dtype=np.int64)
    for k in range(n_classes):
        members = np.nonzero(km.labels_ == k)[0]
        near = members[np.argsort(dist[members, k], kind="stable")[:per_class]]
        out[near] = k
    return out


def align_images(images: np.ndarray, psi_deg: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """Particles brought into the class frame: ``A(y) = I(R(psi)^T y + t)`` (host, bilinear).

    Inverts the model ``I(p) = A(R(psi) (p - t))``; ``shifts_px`` (m, 2) are (x, y) px.
    """
    from scipy import ndimage

    m, b = images.shape[0], images.shape[-1]
    g = np.arange(b, dtype=np.float64) - b // 2
    yy, xx = np.meshgrid(g, g, indexing="ij")
    out = np.empty((m, b, b), dtype=np.float32)
    for i in range(m):
        th = np.deg2rad(float(psi_deg[i]))
        c, s = np.cos(th), np.sin(th)
        px = c * xx + s * yy + shifts_px[i, 0]  # R^T y + t
        py = -s * xx + c * yy + shifts_px[i, 1]
        out[i] = ndimage.map_coordinates(images[i].astype(np.float64), [py + b // 2, px + b // 2], order=1,
                                         mode="constant", cval=0.0)
    return out


def split_class(images: np.ndarray, ctf_params: dict[str, Any] | None, psi_deg: np.ndarray,
                shifts_px: np.ndarray, mask: np.ndarray, psize_A: float, nbasis: int,
                seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Split the members of one class in two (bisecting, EMAN2-like MSA of aligned particles).

    Members are CTF-multiplied (phase-consistent), aligned by their current pose, reduced by PCA
    to ``nbasis`` components and split by seeded 2-means.  Returns the side of every member (m,)
    and the two CTF-corrected (Wiener-like) aligned averages (2, b, b // 2 + 1), centred-origin FFT.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    b = images.shape[-1]
    x = cfft2(np, images.astype(np.float32) * mask)
    if ctf_params is not None:
        ctf = ctf_half(np, b, psize_A, ctf_params)
        x, c2 = x * ctf, (ctf * ctf).astype(np.float64)
    else:
        c2 = np.ones((len(images), b, b // 2 + 1))
    al = align_images(icfft2(np, x, b), psi_deg, shifts_px) * mask
    feats = al.reshape(len(al), -1).astype(np.float64)
    feats -= feats.mean(0)
    y = PCA(n_components=max(1, min(nbasis, len(al) - 1)), svd_solver="full").fit_transform(feats)
    side = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(y)
    fa = cfft2(np, al.astype(np.float64))
    avg = np.zeros((2, b, b // 2 + 1), dtype=np.complex128)
    for j in (0, 1):
        sel = side == j
        reg = _WIENER * sel.sum() if ctf_params is not None else 0.0
        avg[j] = fa[sel].sum(0) / (c2[sel].sum(0) + reg + 1e-12)
    return side, avg


def similar_pairs(refs: np.ndarray, max_shell: int, max_shift_px: int = 2, neighbours: int = 2) -> np.ndarray:
    """(K, K) normalised correlation of class averages, best over in-plane rotations and shifts up
    to ``max_shift_px``, from shells 1..``max_shell``; only each class's ``neighbours`` nearest
    classes by the invariant features of :func:`msa_features` are compared (others: -1)."""
    import scipy.fft
    from scipy.spatial.distance import cdist

    k, b = refs.shape[0], refs.shape[-1]
    out = np.full((k, k), -1.0)
    np.fill_diagonal(out, 1.0)
    if k < 2:
        return out
    feats = msa_features(refs, None, np.ones((b, b), np.float32), 1.0, max_shell).astype(np.float64)
    dist = cdist(feats, feats)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :neighbours]
    pairs = {(min(i, int(j)), max(i, int(j))) for i in range(k) for j in nearest[i]}
    sh = shell_map(b)
    low = (sh >= 1) & (sh <= max_shell)
    f = cfft2(np, refs.astype(np.float64)) * low
    h2 = 2.0 * half_weights(b)  # sum_half h2 |f|^2 = sum over the full plane
    norm = np.sqrt((h2 * np.abs(f) ** 2).sum((1, 2)))
    padded = cfft2(np, pad_real(np, refs.astype(np.float64), 2))
    step = float(np.clip(np.rad2deg(1.0 / max(max_shell, 1)), 1.0, 5.0))
    table = rotation_table(np, b, np.arange(0.0, 360.0, step), 2)
    g = np.fft.fftfreq(b) * b
    near = np.hypot(g[:, None], g[None, :]) <= max_shift_px
    for i, j in sorted(pairs):
        r = gather(np, padded[j], table) * low
        rn = np.sqrt((h2 * np.abs(r) ** 2).sum((1, 2)))
        cc = scipy.fft.irfft2(f[i][None] * np.conj(r), s=(b, b), axes=(-2, -1)) * (b * b)
        best = (cc[:, near] / np.maximum(norm[i] * rn, 1e-300)[:, None]).max()
        out[i, j] = out[j, i] = best
    return out
