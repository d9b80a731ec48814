"""Uniform grids over the rotations SO(3) and over in-plane shifts, with the multi-level
(coarse-to-fine) neighbourhoods the pose search branches into.

A rotation grid of step ``s`` degrees is a Fibonacci lattice of viewing directions on the sphere
with about ``4 pi / s^2`` points (nearest-neighbour spacing about ``s``) times in-plane angles
``psi`` every ``s`` degrees (HEALPix-free, the same spacing as RELION's HEALPix order with that
step).  Rotations are pose matrices ``R`` (:mod:`cryoframe.geometry.rotations`): the viewing
direction is ``R[:, 2]`` (ZYZ Euler rot = its azimuth, tilt = its polar angle), psi the in-plane angle.

A *neighbourhood* of step ``s`` is the set of 3 x 3 x 3 small rotations ``exp([u])`` with
``u in {-s, 0, s}^3`` (rad): composing a grid point of step ``2 s`` with it (``R @ D``) covers the
cell of ``R`` at twice the resolution, so one level of refinement halves the step
(branch = a point with its neighbourhood of the next level).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fibonacci_sphere", "level_steps", "local_rotations", "rotation_grid", "shift_grid"]


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (n, 3) on the sphere (golden-angle spiral)."""
    if n < 1:
        raise ValueError(f"need n >= 1 directions (got {n})")
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def inplane_count(step_deg: float) -> int:
    """In-plane angles per direction of :func:`rotation_grid` at ``step_deg`` degrees."""
    return max(1, int(round(360.0 / step_deg)))


def rotation_grid(step_deg: float) -> np.ndarray:
    """Pose matrices (m, 3, 3) float64 of a uniform SO(3) grid of angular step ``step_deg`` degrees.

    Directions: a Fibonacci lattice of ``round(4 pi / step^2)`` points; in-plane angles every
    ``360 / round(360 / step)`` degrees.  ``m`` is about ``8 pi^2 / step^3`` (step in rad).
    """
    if not 0 < step_deg <= 180:
        raise ValueError(f"step must be in (0, 180] degrees (got {step_deg})")
    s = math.radians(step_deg)
    nd = max(2, int(round(4 * math.pi / (s * s))))
    d = fibonacci_sphere(nd)
    rot = np.arctan2(d[:, 1], d[:, 0])
    tilt = np.arccos(np.clip(d[:, 2], -1.0, 1.0))
    npsi = inplane_count(step_deg)
    psi = np.arange(npsi) * (2 * math.pi / npsi)
    e = np.stack([np.repeat(rot, npsi), np.repeat(tilt, npsi), np.tile(psi, nd)], axis=1)
    from scipy.spatial.transform import Rotation  # lazy: 0.27 s of start-up

    return Rotation.from_euler("ZYZ", e).as_matrix()


def local_rotations(step_deg: float, radius: int = 1) -> np.ndarray:
    """The neighbourhood (m, 3, 3) of ``(2 radius + 1)^3`` small rotations ``exp([u])`` with ``u`` on a
    cubic lattice of spacing ``step_deg`` degrees (identity first)."""
    r = np.arange(-radius, radius + 1, dtype=np.float64)
    u = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    u = u[np.argsort(np.abs(u).sum(1), kind="stable")] * math.radians(step_deg)
    from scipy.spatial.transform import Rotation  # lazy: 0.27 s of start-up

    return Rotation.from_rotvec(u).as_matrix()


def shift_grid(range_px: float, step_px: float) -> np.ndarray:
    """Shifts (m, 2) px on a square lattice of ``step_px`` within a disc of radius ``range_px``
    (origin first)."""
    if step_px <= 0 or range_px <= 0:
        return np.zeros((1, 2))
    k = int(math.floor(range_px / step_px + 1e-9))
    v = np.arange(-k, k + 1) * step_px
    s = np.stack(np.meshgrid(v, v, indexing="xy"), -1).reshape(-1, 2)
    s = s[(s ** 2).sum(1) <= range_px ** 2 + 1e-9]
    return s[np.argsort((s ** 2).sum(1), kind="stable")]


def level_steps(coarse_deg: float, fine_deg: float) -> list[float]:
    """Angular steps of the levels from ``coarse_deg`` halving down to (at most) ``fine_deg``."""
    out = [float(coarse_deg)]
    while out[-1] / 2 >= fine_deg * 0.999:
        out.append(out[-1] / 2)
    return out
