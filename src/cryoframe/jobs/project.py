"""Projection job (as ``relion_project``): a map and poses -> a store of projection images.

Poses come from a store (``alignments3D/pose``, ``alignments3D/shift``, CTF fields; all its metadata
rows are copied) or are drawn at random (``n`` uniformly distributed rotations, optional random
shifts and defoci).  Images are the Fourier central slices of the ×2-padded, gridding-corrected map
(:mod:`cryoframe.geometry.fourier`), multiplied by each particle's CTF with ``ctf``, translated by
minus the stored shift (the stored shift is the translation that centres the particle), plus white
Gaussian noise when ``snr`` is given.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from cryoframe.distributed.mapreduce import compute
from cryoframe.errors import InputError
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.ctf import ctf_grid
from cryoframe.geometry.rotations import pose_matrix
from cryoframe.jobs._volumes import CTF_FIELDS, particle_geometry, read_map
from cryoframe.schema import arrow_field, numpy_to_arrow
from cryoframe.storage.store import IMAGE_ROW, ParticleStore, StoreWriter

__all__ = ["project", "projection_block"]

OPTICS = {"accel_kv": 300.0, "cs_mm": 2.7, "amp_contrast": 0.1, "phase_shift_rad": 0.0}


def projection_block(vft: Any, rot: np.ndarray, shifts_px: np.ndarray, ctf: dict[str, np.ndarray] | None,
                     box: int, psize_A: float, pad: int = 2, device: str = "cpu") -> np.ndarray:
    """Projections (n, box, box) float32 from a projector grid ``vft`` (:func:`fo.volume_transform`)."""
    from cryoframe.backend import get_array_module, to_host

    xp = get_array_module(device)
    g = xp.asarray(vft)
    f = fo.extract_slices(g, xp.asarray(rot) if xp is not np else rot, box, pad, xp=xp)
    if ctf is not None:
        f = f * ctf_grid(box, psize_A, ctf, xp=xp)
    f = f * fo.phase_shift(box, -np.asarray(shifts_px), xp)
    return to_host(fo.icfft2(f, box, xp)).astype(np.float32)


def _random_particles(n: int, seed: int, ctf: bool, max_shift_px: float, defocus_A: tuple[float, float],
                      psize: float) -> dict[str, np.ndarray]:
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(np.random.SeedSequence([seed, 151]))
    cols: dict[str, np.ndarray] = {
        "uid": rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True),
        "alignments3D/pose": Rotation.random(n, random_state=rng).as_rotvec().astype("<f4"),
        "alignments3D/shift": rng.uniform(-max_shift_px, max_shift_px, (n, 2)).astype("<f4"),
        "alignments3D/psize_A": np.full(n, psize, "<f4"),
    }
    if ctf:
        df = rng.uniform(*defocus_A, n)
        cols["ctf/df1_A"] = (df + rng.uniform(0, 500, n)).astype("<f4")
        cols["ctf/df2_A"] = df.astype("<f4")
        cols["ctf/df_angle_rad"] = rng.uniform(0, np.pi, n).astype("<f4")
        for k, v in OPTICS.items():
            cols[f"ctf/{k}"] = np.full(n, v, "<f4")
    return cols


def project(map_path: str | os.PathLike[str], out: str | os.PathLike[str], *, poses: ParticleStore | None = None,
            n: int | None = None, ctf: bool = False, snr: float | None = None, seed: int = 0,
            max_shift_px: float = 0.0, defocus_A: tuple[float, float] = (10000.0, 25000.0),
            psize_A: float | None = None, pad: int = 2, device: str = "cpu", overwrite: bool = False,
            block: int = 1024) -> ParticleStore:
    """Project ``map_path`` at the poses of ``poses`` (or ``n`` random ones) into a new store ``out``."""
    import dask

    if psize_A is not None and not psize_A > 0:
        raise InputError(f"--psize must be > 0 Å (got {psize_A})")
    if not max_shift_px >= 0:
        raise InputError(f"--max-shift must be >= 0 px (got {max_shift_px})")
    lo_df, hi_df = defocus_A
    if not 0 < lo_df <= hi_df:
        raise InputError(f"--defocus MIN MAX must satisfy 0 < MIN <= MAX Å (got {lo_df} {hi_df})")
    vol, vs = read_map(map_path)
    psize = float(psize_A or vs)
    if not psize > 0:
        raise InputError(f"{map_path}: the map header has no voxel size; pass --psize")
    box = vol.shape[0]
    if (poses is None) == (n is None):
        raise InputError("give either --poses STORE or --n N (random poses)")
    if snr is not None and not snr > 0:
        raise InputError(f"--snr must be > 0 (got {snr})")
    if poses is not None:
        g = particle_geometry(poses, ctf=ctf, need_images=False)
        # shifts: px of the particles' pixel size -> px of the map's
        shifts = g["shifts_px"] * (g["psize_A"] / psize)
        rot, ctfp = g["rot"], g["ctf"]
        t = poses.table()
        if IMAGE_ROW in t.column_names:
            t = t.drop_columns([IMAGE_ROW])
        nn = poses.n
    else:
        if n is None or n < 1:
            raise InputError(f"--n must be >= 1 (got {n})")
        cols = _random_particles(n, seed, ctf, max_shift_px, defocus_A, psize)
        rot = pose_matrix(cols["alignments3D/pose"].astype(np.float64))
        shifts = cols["alignments3D/shift"].astype(np.float64)
        ctfp = {k: cols[f].astype(np.float64) for k, f in CTF_FIELDS.items()} if ctf else None
        cols["blob/shape"] = np.full((n, 2), box, "<u4")
        cols["blob/psize_A"] = np.full(n, psize, "<f4")
        t = pa.Table.from_arrays([numpy_to_arrow(v) for v in cols.values()], schema=pa.schema(
            [arrow_field(k, v.dtype, v.shape[1:]) for k, v in cols.items()]))
        nn = n
    params = {"map": str(map_path), "ctf": ctf, "snr": snr, "seed": seed, "n": n, "pad": pad}
    inputs: list[Any] = [map_path] + ([poses] if poses is not None else [])
    vft = fo.volume_transform(vol, pad)
    with StoreWriter(out, op="project", params=params, inputs=inputs, parent=poses, overwrite=overwrite) as w:
        t = t.append_column(pa.field(IMAGE_ROW, pa.int64()), pa.array(np.arange(nn, dtype=np.int64)))
        w.write_metadata(t)
        z = w.create_images(nn, box)
        rows = z.chunks[0]
        step = max(1, block // rows) * rows
        sigma = None
        if snr is not None:
            probe = projection_block(vft, rot[:256], shifts[:256], None if ctfp is None else
                                     {k: v[:256] for k, v in ctfp.items()}, box, psize, pad, device)
            sigma = float(np.sqrt(np.mean(np.var(probe, axis=(1, 2))) / snr))

        def run(lo: int, hi: int) -> None:
            img = projection_block(vft, rot[lo:hi], shifts[lo:hi],
                                   None if ctfp is None else {k: v[lo:hi] for k, v in ctfp.items()},
                                   box, psize, pad, device)
            if sigma is not None:
                rng = np.random.default_rng(np.random.SeedSequence([seed, 152, lo]))
                img += rng.normal(0.0, sigma, img.shape).astype(np.float32)
            z[lo:hi] = img

        compute(*[dask.delayed(run)(lo, min(lo + step, nn)) for lo in range(0, nn, step)])
        return w.commit(psize_A=psize, box_px=box, source={"projected_from": str(map_path)})
