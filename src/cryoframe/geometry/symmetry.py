"""Point-group symmetry as sets of rotation matrices, in RELION's axis conventions.

RELION (``symmetries.cpp``) builds each group from generator axes and closes it under
multiplication; the same generators are used here:

=========  ==========================================================================
``Cn``     n-fold about z
``Dn``     n-fold about z, 2-fold about x
``T``      3-fold about z, 2-fold about (0, 0.816496, 0.577350)
``O``      3-fold about (1, 1, 1)/sqrt(3), 4-fold about z
``I``      = ``I2`` (RELION's default): 2-fold about z, 5-fold about (0.525731, 0, 0.850651),
           3-fold about (0, 0.356822, 0.934172)
``I1``     2-fold about x, 5-fold about (0.850651, 0, -0.525731), 3-fold about (0.934172, 0.356822, 0)
``I3``     5-fold about z (2-fold about (-0.525731, 0, 0.850651))
``I4``     2-fold about (0.525731, 0, 0.850651), 5-fold about (0.894427, 0, 0.447214)
=========  ==========================================================================

A group is closed under inverses, so the set is the same whether its matrices act on coordinates
or on frames.  Names are case-insensitive (``c1``, ``d7``, ``i``).
"""

from __future__ import annotations

import re

import numpy as np

from cryoframe.errors import InputError
from cryoframe.geometry.rotations import pose_matrix

__all__ = ["symmetry_matrices", "symmetry_order"]

_I_GENERATORS = {
    "I2": [(2, (0, 0, 1)), (5, (0.525731114, 0, 0.850650807)), (3, (0, 0.356822076, 0.934172364))],
    "I1": [(2, (1, 0, 0)), (5, (0.85065080702670, 0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0))],
    "I3": [(2, (-0.5257311143, 0, 0.8506508070)), (5, (0, 0, 1)),
           (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428))],
    "I4": [(2, (0.5257311143, 0, 0.8506508070)), (5, (0.8944271932547096, 0, 0.4472135909903704)),
           (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428))],
}


def _generators(name: str) -> list[tuple[int, tuple[float, float, float]]]:
    s = name.strip().upper()
    m = re.fullmatch(r"([CD])(\d{1,3})", s)
    if m:
        n = int(m.group(2))
        if n < 1 or (m.group(1) == "D" and n < 2):
            raise InputError(f"symmetry {name!r}: C needs n >= 1 and D needs n >= 2")
        gens = [(n, (0.0, 0.0, 1.0))]
        if m.group(1) == "D":
            gens.append((2, (1.0, 0.0, 0.0)))
        return gens
    if s == "T":
        return [(3, (0, 0, 1)), (2, (0, 0.816496, 0.577350))]
    if s == "O":
        return [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0, 0, 1))]
    if s in ("I", "I1", "I2", "I3", "I4"):
        return _I_GENERATORS["I2" if s == "I" else s]
    raise InputError(f"unknown symmetry {name!r}: expected Cn, Dn (n a number), T, O, I or I1-I4 (RELION's names)")


def symmetry_matrices(name: str) -> np.ndarray:
    """The rotation matrices (k, 3, 3) float64 of point group ``name`` (identity first)."""
    gens = []
    for order, axis in _generators(name):
        a = np.asarray(axis, dtype=np.float64)
        gens.append(pose_matrix(a / np.linalg.norm(a) * (2 * np.pi / order)))
    group = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for g in frontier:
            for h in gens:
                p = h @ g
                if not any(np.abs(p - q).max() < 1e-4 for q in group):
                    group.append(p)
                    new.append(p)
        frontier = new
        if len(group) > 200:  # pragma: no cover - generators are fixed above
            raise InputError(f"symmetry {name!r}: generators do not close into a finite group")
    return np.stack(group)


def symmetry_order(name: str) -> int:
    """Number of operators of point group ``name``."""
    return len(symmetry_matrices(name))
