"""Rotations and shifts in cryoSPARC's and RELION's conventions.

Three descriptions of one particle orientation are used across cryo-EM software:

* cryoSPARC ``alignments3D/pose``: a rotation vector (axis * angle, rad).
* RELION ``rlnAngleRot``/``rlnAngleTilt``/``rlnAnglePsi`` (deg): ZYZ Euler angles, turned into the
  matrix ``A`` by RELION's ``Euler_angles2matrix`` (:func:`euler_to_relion_matrix`).
* The *pose matrix* ``R`` used throughout cryoframe: it maps image coordinates (x, y, z) px about
  the box centre to volume coordinates, so the projection of a volume ``V`` is
  ``P(x, y) = sum_z V(R (x, y, z))`` and, by the central-slice theorem, the 2D Fourier transform of
  ``P`` at frequency (kx, ky) is the 3D transform of ``V`` at ``R (kx, ky, 0)``.

They are related by ``R = Rotation.from_rotvec(pose).as_matrix() = A.T`` and
``(rot, tilt, psi) = Rotation.from_rotvec(pose).as_euler("ZYZ")`` — pinned by ``relion_project``
output in ``tests/data/relion_*`` (tests/test_geometry_relion.py).

Shifts (``alignments3D/shift``, px of ``alignments3D/psize_A``; RELION ``rlnOriginX/YAngst``, Å) are
the translation that centres the particle: the particle centre sits at ``box // 2 - shift`` and
translating the image by ``+shift`` centres it.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray

# scipy.spatial.transform is imported inside the functions that need it: it costs about 0.27 s of
# start-up, and the hot path (pose_matrix, every 3D job) is Rodrigues' formula in NumPy

__all__ = ["euler_to_pose", "euler_to_relion_matrix", "matrix_to_pose", "pose_matrix", "pose_to_euler"]


def pose_matrix(pose: ArrayLike) -> NDArray[np.float64]:
    """Pose matrices ``R`` (..., 3, 3) of rotation vectors ``pose`` (..., 3) rad (cryoSPARC)."""
    p = np.asarray(pose, dtype=np.float64)
    v = p.reshape(-1, 3)
    th = np.linalg.norm(v, axis=1)
    small = th < 1e-6
    ts = np.where(small, 1.0, th)
    a = np.where(small, 1.0 - th**2 / 6.0, np.sin(ts) / ts)  # sin(t) / t
    b = np.where(small, 0.5 - th**2 / 24.0, (1.0 - np.cos(ts)) / ts**2)  # (1 - cos t) / t^2
    k = np.zeros((len(v), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = v[:, 2], -v[:, 1], v[:, 0]
    m = np.eye(3)[None] + a[:, None, None] * k + b[:, None, None] * (k @ k)  # Rodrigues: R = I + a K + b K^2
    return m.reshape(*p.shape[:-1], 3, 3)


def pose_direction(pose: ArrayLike) -> NDArray[np.float64]:
    """Third column ``R[..., :, 2]`` of :func:`pose_matrix` (the projection direction in the map
    frame), from Rodrigues' formula for that column alone: ``e_z + a v×e_z + b v×(v×e_z)``."""
    p = np.asarray(pose, dtype=np.float64)
    v = p.reshape(-1, 3)
    vx, vy, vz = v[:, 0], v[:, 1], v[:, 2]
    th2 = vx * vx + vy * vy + vz * vz
    th = np.sqrt(th2)
    small = th < 1e-6
    ts = np.where(small, 1.0, th)
    a = np.where(small, 1.0 - th2 / 6.0, np.sin(ts) / ts)
    b = np.where(small, 0.5 - th2 / 24.0, (1.0 - np.cos(ts)) / (ts * ts))
    out = np.stack([a * vy + b * vx * vz, -a * vx + b * vy * vz, 1.0 + b * (vz * vz - th2)], axis=-1)
    return out.reshape(*p.shape[:-1], 3)


def matrix_to_pose(r: ArrayLike) -> NDArray[np.float64]:
    """Rotation vectors (..., 3) rad of pose matrices ``R`` (..., 3, 3)."""
    from scipy.spatial.transform import Rotation

    m = np.asarray(r, dtype=np.float64)
    return Rotation.from_matrix(m.reshape(-1, 3, 3)).as_rotvec().reshape(*m.shape[:-2], 3)


def pose_to_euler(pose: ArrayLike) -> NDArray[np.float64]:
    """RELION (rot, tilt, psi) in degrees (..., 3) of rotation vectors ``pose`` (..., 3) rad."""
    from scipy.spatial.transform import Rotation

    p = np.asarray(pose, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gimbal lock: any split of rot/psi at tilt 0 is the same matrix
        e = Rotation.from_rotvec(p.reshape(-1, 3)).as_euler("ZYZ", degrees=True)
    return e.reshape(*p.shape[:-1], 3)


def euler_to_pose(euler_deg: ArrayLike) -> NDArray[np.float64]:
    """Rotation vectors (..., 3) rad of RELION (rot, tilt, psi) angles (..., 3) in degrees."""
    from scipy.spatial.transform import Rotation

    e = np.asarray(euler_deg, dtype=np.float64)
    return Rotation.from_euler("ZYZ", e.reshape(-1, 3), degrees=True).as_rotvec().reshape(*e.shape[:-1], 3)


def euler_to_relion_matrix(rot_deg: ArrayLike, tilt_deg: ArrayLike, psi_deg: ArrayLike) -> NDArray[np.float64]:
    """RELION's ``Euler_angles2matrix`` (..., 3, 3) of ZYZ angles in degrees (written from its
    published formula; equals ``pose_matrix(euler_to_pose(...)).T``)."""
    a, b, g = (np.deg2rad(np.asarray(x, dtype=np.float64)) for x in (rot_deg, tilt_deg, psi_deg))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb]]
    return np.stack([np.stack(r, -1) for r in rows], -2)
