"""Pose accuracy of an ab-initio result against known poses, up to what ab initio cannot know:
a global rotation of the map and its hand.

Estimated and true pose matrices of one map related by ``V_est(u) = V_true(G u)`` satisfy
``R_true = G R_est``; the mirrored map (``z -> -z``, ``F = diag(1, 1, -1)``) gives
``F R_true F = G R_est``.  ``G`` is the rotation closest to ``sum_i R_true_i R_est_i^T`` (SVD),
refined on the particles within 20 deg; the hand with the lower median error wins.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["pose_errors"]

_F = np.diag([1.0, 1.0, -1.0])


def _project_so3(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (deg) between pose matrices ``a`` and ``b`` (n, 3, 3)."""
    tr = np.einsum("nij,nij->n", a, b)
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1.0, 1.0)))


def pose_errors(rot_est: np.ndarray, rot_true: np.ndarray) -> dict[str, Any]:
    """Angular errors (deg) of ``rot_est`` (n, 3, 3) after the best global rotation and hand.

    Returns ``errors_deg`` (n,), ``median_deg``, ``within_10_deg`` (fraction), ``hand``
    (``same``/``mirrored``) and ``rotation`` (3, 3) ``G``.
    """
    best: dict[str, Any] | None = None
    for hand, tr in (("same", rot_true), ("mirrored", _F @ rot_true @ _F)):
        g = _project_so3(np.einsum("nij,nkj->ik", tr, rot_est))
        for _ in range(4):
            err = _angles(tr, g @ rot_est)
            sel = err < max(20.0, np.percentile(err, 10))
            g = _project_so3(np.einsum("nij,nkj->ik", tr[sel], rot_est[sel]))
        err = _angles(tr, g @ rot_est)
        out = {"errors_deg": err, "median_deg": float(np.median(err)), "within_10_deg": float(np.mean(err <= 10)),
               "hand": hand, "rotation": g}
        if best is None or out["median_deg"] < best["median_deg"]:
            best = out
    assert best is not None
    return best


def rotation_of(g: np.ndarray) -> np.ndarray:
    """Rotation vector (rad) of ``g``."""
    return Rotation.from_matrix(g).as_rotvec()
