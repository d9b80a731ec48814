"""Level 0 of the pose search (:mod:`cryoframe.algorithms.posesearch`): the correlation terms of every
shift and rotation of the exhaustive grid and the selection of each particle's lowest poses.

A real volume's transform is Hermitian, so the central slice at a rotation turned by 180 degrees in
plane is the complex conjugate of the slice at that rotation: ``P(R Rz(pi))_k = P(R)_{-k} =
conj(P(R)_k)``.  The grid of :func:`cryoframe.geometry.grids.rotation_grid` holds such pairs when its
number of in-plane angles is even, and the correlation ``B = Re sum_k a_k conj(P_k)`` of the pair is
``U + V`` and ``U - V`` with ``U = sum Re(a) Re(P)`` and ``V = sum Im(a) Im(P)``: two products over
half the rotations give the terms of all of them, half the multiply-adds of one product over the
whole grid (and half the slices to extract).  :class:`PsiPairs` holds ``U`` and ``V``;
:func:`level0_top` reads it without forming the (nb, S, R) array.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from cryoframe.backend import to_host
from cryoframe.geometry import _kernels

__all__ = ["PsiPairs", "level0_top", "pair_products", "psi_half"]


def psi_half(grid: np.ndarray, npsi: int) -> int:
    """``npsi // 2`` when ``grid`` (nd npsi, 3, 3) lists each direction's ``npsi`` in-plane angles in
    order with the second half the first turned by 180 degrees in plane (``R Rz(pi)``), else 0."""
    if npsi < 2 or npsi % 2 or len(grid) % npsi:
        return 0
    h = npsi // 2
    g = grid.reshape(-1, 2, h, 3, 3)
    turned = g[:, 0] * np.array([-1.0, -1.0, 1.0])  # R Rz(pi): the first two columns negated
    return h if np.allclose(turned, g[:, 1], atol=1e-9) else 0


@dataclass
class PsiPairs:
    """The level-0 correlations ``B`` (nb, S, R) of a grid of in-plane pairs (see the module
    docstring) as ``u``, ``v`` (nb, S, nd, h): rotation ``d 2h + p`` is ``u + v`` at ``(d, p)``, rotation
    ``d 2h + h + p`` is ``u - v`` there."""

    u: Any
    v: Any
    hi: Any = None  # the extremes over the shifts (nb, R), when computed with the products
    lo: Any = None

    @property
    def shape(self) -> tuple[int, int, int]:
        nb, S, nd, h = self.u.shape
        return nb, S, 2 * nd * h

    def full(self, xp: ModuleType = np) -> Any:
        """``B`` (nb, S, R)."""
        nb, S, R = self.shape
        return xp.stack([self.u + self.v, self.u - self.v], 3).reshape(nb, S, R)

    def extremes(self, xp: ModuleType = np) -> tuple[Any, Any]:
        """The largest and the smallest ``B`` over the shifts, (nb, R) each: the ones
        :func:`pair_products` computed with the products (the compiled pass), else from the formed array."""
        if self.hi is not None:
            return self.hi, self.lo
        t = self.full(xp)
        return t.max(1), t.min(1)

    def take(self, rot: Any, xp: ModuleType = np) -> Any:
        """``B`` at the rotations ``rot`` (nb, q) of every shift: (nb, S, q)."""
        nb, S, nd, h = self.u.shape
        half = (rot // h) % 2
        idx = (rot // (2 * h)) * h + rot % h
        u = xp.take_along_axis(self.u.reshape(nb, S, nd * h), idx[:, None, :], 2)
        v = xp.take_along_axis(self.v.reshape(nb, S, nd * h), idx[:, None, :], 2)
        return xp.where(half[:, None, :] == 0, u + v, u - v)


def pair_products(a: Any, p_re: Any, p_im: Any, h: int, xp: ModuleType = np, block: int = 4) -> PsiPairs:
    """:class:`PsiPairs` of the level-0 terms ``a`` (nb, S, m0) complex against the pairs' first-half
    slices ``p_re``, ``p_im`` (m0, R / 2).  On the CPU the products and the extremes over the shifts
    run ``block`` particles at a time, so the extremes read each block's products while they are in
    the cache (the whole block's (nb S, R / 2) products are several times the cache; 2 threads, 29
    shifts, 4,392 rotations: 17% less time for the products and extremes with 4 particles a block than
    with 50, ad hoc)."""
    nb, S, m0 = a.shape
    re, im = xp.ascontiguousarray(a.real).reshape(nb * S, m0), xp.ascontiguousarray(a.imag).reshape(nb * S, m0)
    if xp is not np or not _kernels.HAVE_NUMBA:
        return PsiPairs(*((x @ q).reshape(nb, S, -1, h) for x, q in ((re, p_re), (im, p_im))))
    r2 = p_re.shape[1]
    u = np.empty((nb, S, r2 // h, h), np.float32)
    v = np.empty_like(u)
    hi = np.empty((nb, 2 * r2), np.float32)
    lo = np.empty_like(hi)
    for s0 in range(0, nb, block):
        s1 = min(nb, s0 + block)
        rows = slice(s0 * S, s1 * S)
        np.matmul(re[rows], p_re, out=u[s0:s1].reshape(-1, r2))
        np.matmul(im[rows], p_im, out=v[s0:s1].reshape(-1, r2))
        _kernels.extremes_pairs(u[s0:s1], v[s0:s1], out=(hi[s0:s1], lo[s0:s1]))
    return PsiPairs(u, v, hi, lo)


def level0_top(t1: Any, const: Any, t2: Any, top: int, score: Any, score_extremes: Any,
               xp: ModuleType = np) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` lowest level-0 poses of each particle, lowest first: flat indices ``s * R + r``
    (nb, top) and their errors (nb, top), from the correlation terms ``t1`` (nb, S, R) (``B`` of
    every shift and rotation, an array or :class:`PsiPairs`), ``const`` (nb,) (``A``) and ``t2``
    (nb, R) (``D``) by ``score(a, b, d)`` (which may overwrite ``b``); ``score_extremes(a, hi, lo, d)``:
    the lower of ``score`` at ``hi`` and at ``lo`` (:meth:`PoseSearch._score_extremes`).

    A pose's error depends on its shift only through ``B``: linearly (no scale), or as
    ``-(B + q)^2 / (D + q)`` (the scale marginal), so a rotation's lowest error over the shifts is at
    its largest or its smallest ``B`` (rounding is monotone too: the same float).  The ``top`` lowest
    poses lie on the ``top`` rotations of lowest best-shift error, so only those rotations' S x top
    errors are scored and partitioned: the same poses as scoring and partitioning all S x R, whose
    element-wise passes over the (nb, S, R) array took a third of the soft search's time at 29
    shifts."""
    nb, S, R = t1.shape
    a = const[:, None]
    if S > 1 and top < R:
        if isinstance(t1, PsiPairs):
            hi, lo = t1.extremes(xp)
        elif xp is np and _kernels.HAVE_NUMBA:
            hi, lo = _kernels.extremes(t1)
        else:
            hi, lo = t1.max(1), t1.min(1)
        er = to_host(score_extremes(a, hi, lo, t2))
        rsel = np.argpartition(er, top - 1, axis=1)[:, :top]  # (nb, top) rotations
        rs = xp.asarray(rsel)
        b = t1.take(rs, xp) if isinstance(t1, PsiPairs) else xp.take_along_axis(t1, rs[:, None, :], 2)
        sub = to_host(score(a[:, :, None], b, xp.take_along_axis(t2, rs, 1)[:, None, :])).reshape(nb, -1)  # (nb, S * top)
        o = np.argpartition(sub, top - 1, axis=1)[:, :top]
        order = (o // top) * R + np.take_along_axis(rsel, o % top, 1)
    else:
        b = t1.full(xp) if isinstance(t1, PsiPairs) else t1.copy()
        sub = to_host(score(a[:, :, None], b, t2[:, None, :])).reshape(nb, -1)
        o = order = np.argpartition(sub, top - 1, axis=1)[:, :top]
    err = np.take_along_axis(sub, o, 1)
    srt = np.argsort(err, 1)
    return np.take_along_axis(order, srt, 1), np.take_along_axis(err, srt, 1)
