"""MRC maps (volumes) and the per-particle geometry of a store, shared by the 3D jobs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cryoframe.errors import FormatError, InputError
from cryoframe.geometry.ctf import CTF_PARAMS
from cryoframe.geometry.rotations import pose_matrix
from cryoframe.schema.types import numeric_values
from cryoframe.storage.atomic import atomic_path
from cryoframe.storage.checks import bad_particles
from cryoframe.storage.ctf import read_ctf_params
from cryoframe.storage.store import ParticleStore

__all__ = ["CTF_FIELDS", "POSE_FIELD", "SHIFT_FIELD", "SPLIT_FIELD", "particle_geometry", "read_map", "write_map"]

POSE_FIELD = "alignments3D/pose"
SHIFT_FIELD = "alignments3D/shift"
SPLIT_FIELD = "alignments3D/split"
CTF_FIELDS = {k: f"ctf/{k}" for k in CTF_PARAMS}


def write_map(path: str | os.PathLike[str], vol: np.ndarray, psize_A: float) -> Path:
    """Write a ``[z, y, x]`` float32 volume as MRC (mode 2) with voxel size ``psize_A`` Å and origin 0."""
    import mrcfile

    p = Path(path)
    with atomic_path(p) as tmp, mrcfile.new(tmp, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(vol, dtype=np.float32))
        m.voxel_size = float(psize_A)
        m.header.origin = (0.0, 0.0, 0.0)
        m.header.nxstart = m.header.nystart = m.header.nzstart = 0
        m.update_header_stats()
    return p


def read_map(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """A cubic MRC map as ``([z, y, x] float32 array, voxel size Å or 0 when the header has none)``."""
    import mrcfile

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: map not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(p, mode="r", permissive=True) as m:
                if m.data is None:
                    raise FormatError(f"{p}: MRC file without data")
                data = np.asarray(m.data, dtype=np.float32)
                vs = float(m.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise FormatError(f"{p}: not a readable MRC map ({exc})") from exc
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{p}: expected a cubic 3D map, got shape {data.shape}")
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise FormatError(f"{p}: {bad} voxels are NaN or infinite; expected finite values")
    return data, vs


def _refuse_non_finite(store: ParticleStore, field: str, values: np.ndarray) -> None:
    """Raise :class:`InputError` naming the particles whose ``field`` (rows of ``values``) is NaN or infinite."""
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        raise bad_particles(store, bad, f"field {field} is NaN, null or infinite for {{who}}",
                            "fix them (a refinement's output should not hold any)")


def particle_geometry(store: ParticleStore, *, ctf: bool, need_images: bool = True) -> dict[str, Any]:
    """Pose matrices, shifts (px of the images), CTF parameters, box and pixel size of ``store``.

    Raises :class:`InputError` naming the field when poses (or, with ``ctf``, CTF fields) are missing
    or the particles have mixed box sizes.
    """
    fields = set(store.fields)
    if POSE_FIELD not in fields:
        raise InputError(f"{store.path}: field {POSE_FIELD} is missing: 3D reconstruction needs poses from a "
                         "refinement or ab-initio (e.g. a cryoSPARC refinement .cs or a RELION refine3d "
                         "_data.star with rlnAngleRot/Tilt/Psi)")
    if need_images and not store.has_images:
        raise InputError(f"{store.path}: store has no particle images (imported with --metadata-only?)")
    ctf_params = read_ctf_params(store, "use --no-ctf (reconstruct) or leave out --ctf (project)",
                                 need="--ctf") if ctf else None
    box = store.box
    if "blob/shape" in fields:
        col = store.table(["blob/shape"]).column(0)
        shapes = numeric_values(col).reshape(len(col), -1)
        u = np.unique(shapes.reshape(len(shapes), -1), axis=0) if len(shapes) else np.zeros((0, 2))
        if len(u) > 1:
            raise InputError(f"{store.path}: particles have mixed box sizes (blob/shape values "
                             f"{', '.join(str(tuple(int(v) for v in r)) for r in u[:4])}); reconstruct one box size "
                             "at a time (query on blob/shape)")
        if box is None and len(u):
            box = int(u[0][0])
    if box is None:
        raise InputError(f"{store.path}: unknown box size (no images and no blob/shape)")
    psize = store.pixel_size()
    cols = [POSE_FIELD] + [f for f in (SHIFT_FIELD, "alignments3D/psize_A", SPLIT_FIELD) if f in fields]
    t = store.table(cols)

    def vec(name: str, k: int) -> np.ndarray:
        col = t.column(name)
        return np.asarray(numeric_values(col), dtype=np.float64).reshape(-1, k)

    pose = vec(POSE_FIELD, 3)
    _refuse_non_finite(store, POSE_FIELD, pose)
    out: dict[str, Any] = {"box": int(box), "psize_A": float(psize), "n": store.n, "pose": pose,
                           "rot": pose_matrix(pose)}
    shifts = np.zeros((store.n, 2))
    if SHIFT_FIELD in fields:
        shifts = vec(SHIFT_FIELD, 2)
        _refuse_non_finite(store, SHIFT_FIELD, shifts)
        if "alignments3D/psize_A" in fields:  # shifts are in px of the alignment's pixel size
            pa = numeric_values(t.column("alignments3D/psize_A")).astype(np.float64)
            pa = np.where(pa > 0, pa, psize)
            shifts = shifts * (pa / psize)[:, None]
    out["shifts_px"] = shifts
    out["split"] = numeric_values(t.column(SPLIT_FIELD)).astype(np.int64) if SPLIT_FIELD in fields else None
    if ctf_params is not None:
        ctf_params.setdefault("phase_shift_rad", np.zeros(store.n))
    out["ctf"] = ctf_params
    return out
