"""Synthetic K-state 3D data for 3D classification: one chiral blob object in K states that differ
by added domains and a small conformational swing, projected at random known poses with CTF and
white noise at a given SNR (via :func:`cryoframe.jobs.project.projection_block`).

State ``j`` (0-based) = the base object (``blob_model(1, box, seed, 3)``) with its last two blobs
(an "arm") rotated by ``swing_deg * j / (K - 1)`` about the z axis through the centre, plus extra
domain blobs: domain ``d`` (one Gaussian of sd ``domain_sd`` box at amplitude ``domain_amp`` x the base
blobs' mean) present when bit ``d`` of ``j`` is set.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["make_states", "state_particles", "write_state_store"]

OPTICS = {"accel_kv": 300.0, "cs_mm": 2.7, "amp_contrast": 0.1, "phase_shift_rad": 0.0}


def make_states(k: int, box: int, seed: int = 0, swing_deg: float = 10.0, domain_amp: float = 1.5,
                domain_sd: float = 0.07) -> np.ndarray:
    """(k, box, box, box) float32 ``[z, y, x]`` volumes of the K states (see the module docstring)."""
    from cryoframe.synthetic.physics import blob_model, render_blobs_3d

    c, p, a = (np.array(x[0]) for x in blob_model(1, box, seed, 3))
    live = a != 0
    c, p, a = c[live], p[live], a[live]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 16]))
    ndom = max(1, int(np.ceil(np.log2(max(k, 2)))))
    r = 0.22 * box
    dirs = rng.normal(size=(ndom, 3))
    dom_c = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * r
    dom_p = np.repeat(np.eye(3)[None] / (domain_sd * box) ** 2, ndom, 0)
    out = []
    for j in range(k):
        th = np.deg2rad(swing_deg * j / max(k - 1, 1))
        rz = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
        cj = c.copy()
        cj[-2:] = cj[-2:] @ rz.T
        present = [d for d in range(ndom) if (j >> d) & 1]
        cc = np.concatenate([cj, dom_c[present]])
        pp = np.concatenate([p, dom_p[present]])
        aa = np.concatenate([a, np.full(len(present), domain_amp * np.abs(a).mean())])
        out.append(render_blobs_3d(cc, pp, aa, box))
    return np.stack(out).astype(np.float32)


def state_particles(n: int, box: int, k: int, snr: float, seed: int = 0, psize_A: float = 2.5,
                    max_shift_px: float = 2.0, defocus_A: tuple[float, float] = (8000.0, 25000.0),
                    **state_kw: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Images (n, box, box) float32 of random states at uniform random poses and their truth:
    ``class`` (n,), ``pose`` (n, 3) rotation vectors, ``shift`` (n, 2) (stored convention: the
    translation that centres the particle), ``ctf`` dict, ``volumes``, ``noise_sigma``.
    ``state_kw``: :func:`make_states` options (``swing_deg``, ``domain_amp``, ``domain_sd``)."""
    from scipy.spatial.transform import Rotation

    from cryoframe.geometry import fourier as fo
    from cryoframe.jobs.project import projection_block

    vols = make_states(k, box, seed, **state_kw)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 161, n]))
    cls = rng.integers(0, k, n)
    pose = Rotation.random(n, random_state=rng).as_rotvec()
    shift = rng.uniform(-max_shift_px, max_shift_px, (n, 2))
    df = rng.uniform(*defocus_A, n)
    ctf = {"df1_A": df + rng.uniform(0, 300, n), "df2_A": df, "df_angle_rad": rng.uniform(0, np.pi, n),
           **{key: np.full(n, v) for key, v in OPTICS.items()}}
    rot = Rotation.from_rotvec(pose).as_matrix()
    img = np.zeros((n, box, box), dtype=np.float32)
    for j in range(k):
        sel = np.flatnonzero(cls == j)
        if len(sel):
            img[sel] = projection_block(fo.volume_transform(vols[j]), rot[sel], shift[sel],
                                        {key: v[sel] for key, v in ctf.items()}, box, psize_A)
    sigma = float(np.sqrt(np.mean(np.var(img, axis=(1, 2))) / snr))
    img += rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return img, {"class": cls, "pose": pose, "shift": shift, "ctf": ctf, "volumes": vols, "noise_sigma": sigma,
                 "psize_A": psize_A}


def write_state_store(path: str | os.PathLike[str], n: int, box: int, k: int, snr: float, seed: int = 0,
                      psize_A: float = 2.5, overwrite: bool = False) -> dict[str, Any]:
    """Write :func:`state_particles` as a store (cryoSPARC fields: ``alignments3D/pose``/``shift``/
    ``psize_A``, ``ctf/*``, ``blob/*``); returns the truth."""
    import pyarrow as pa

    from cryoframe.schema import arrow_field, numpy_to_arrow
    from cryoframe.storage.store import IMAGE_ROW, StoreWriter

    img, truth = state_particles(n, box, k, snr, seed, psize_A)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 162]))
    cols: dict[str, np.ndarray] = {
        "uid": rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True),
        "alignments3D/pose": truth["pose"].astype("<f4"),
        "alignments3D/shift": truth["shift"].astype("<f4"),
        "alignments3D/psize_A": np.full(n, psize_A, "<f4"),
        "blob/shape": np.full((n, 2), box, "<u4"),
        "blob/psize_A": np.full(n, psize_A, "<f4"),
        **{f"ctf/{key}": v.astype("<f4") for key, v in truth["ctf"].items()},
        IMAGE_ROW: np.arange(n, dtype=np.int64),
    }
    t = pa.Table.from_arrays([numpy_to_arrow(v) if c != IMAGE_ROW else pa.array(v) for c, v in cols.items()],
                             schema=pa.schema([arrow_field(c, v.dtype, v.shape[1:]) if c != IMAGE_ROW
                                               else pa.field(IMAGE_ROW, pa.int64()) for c, v in cols.items()]))
    with StoreWriter(path, op="synth-states3d", params={"n": n, "box": box, "k": k, "snr": snr, "seed": seed},
                     inputs=[], overwrite=overwrite) as w:
        w.write_metadata(t)
        z = w.create_images(n, box)
        z[:] = img
        w.commit(psize_A=psize_A, box_px=box, source={"synthetic": "states3d"})
    return truth
