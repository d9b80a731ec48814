"""3D reconstruction job: a store with poses -> a directory of maps, FSC and model.

``reconstruct(store, out)`` writes ``out/`` atomically (temporary sibling + rename):
``map.mrc`` (both halves), ``map_half_A.mrc``/``map_half_B.mrc``, ``map_filtered.mrc`` (FSC
weighted), ``fsc.json``, ``fsc.png``/``fsc.html`` and ``model.json``; when the store has no
``alignments3D/split`` the seeded random split is written with the particles as the store
``out/particles.cf`` (its metadata plus ``alignments3D/split``, images linked).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryoframe.errors import InputError
from cryoframe.geometry.symmetry import symmetry_matrices
from cryoframe.jobs._volumes import SPLIT_FIELD, particle_geometry, read_map, write_map
from cryoframe.schema.types import numeric_values
from cryoframe.storage.atomic import atomic_path, check_output
from cryoframe.storage.store import ParticleStore

__all__ = ["random_split", "reconstruct"]


def random_split(n: int, seed: int) -> np.ndarray:
    """Half labels 0/1 (n,) of a seeded random split into halves of sizes ceil(n/2) and floor(n/2)."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, 15])).permutation(n)
    half = np.zeros(n, dtype=np.int64)
    half[perm[(n + 1) // 2:]] = 1
    return half


def check_mask(mask: str | os.PathLike[str], box: int, psize: float) -> np.ndarray:
    m, vs = read_map(mask)
    if m.shape[0] != box:
        raise InputError(f"{mask}: mask box {m.shape[0]} px differs from the particles' {box} px")
    if vs > 0 and abs(vs - psize) > 1e-3 * psize:
        raise InputError(f"{mask}: mask pixel size {vs:.4f} Å differs from the particles' {psize:.4f} Å")
    if m.min() < -1e-3 or m.max() > 1 + 1e-3 or m.max() <= 0:  # read_map refused non-finite voxels
        raise InputError(f"{mask}: a mask must have values in [0, 1] and not be empty")
    return m


def reconstruct(store: ParticleStore, out: str | os.PathLike[str], *, symmetry: str = "C1",
                max_resolution_A: float | None = None, mask: str | os.PathLike[str] | None = None,
                ctf: bool = True, weights: str | None = None, regulariser: str | float = "fsc",
                tau2_fudge: float = 1.0, pad: int = 2, seed: int = 0, device: str = "cpu",
                partition_size: int = 2000, plots: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Reconstruct ``store``'s particles (poses ``alignments3D/pose``, shifts, CTF) into ``out/``.

    Returns the summary written to ``model.json`` (paths, particles per half, resolutions in Å).
    See :class:`cryoframe.algorithms.reconstruct.Reconstructor` for the parameters.
    """
    from cryoframe.algorithms.reconstruct import Reconstructor

    t0 = time.perf_counter()
    final = check_output(out, overwrite)
    if device == "cpu":  # numba loads the insertion kernel while the metadata and images are read
        from cryoframe.geometry._kernel_worker import active
        from cryoframe.geometry._kernels import preload

        if active() is None:  # (in the kernel worker's process, if the CLI started one)
            preload("insert_ctf")
    nsym = len(symmetry_matrices(symmetry))
    g = particle_geometry(store, ctf=ctf)
    box, psize = g["box"], g["psize_A"]
    if store.n < 2:
        raise InputError(f"{store.path}: reconstruction needs at least 2 particles (one per half), got {store.n}")
    if max_resolution_A is not None and not max_resolution_A >= 2 * psize - 1e-9:
        raise InputError(f"--max-resolution {max_resolution_A} Å is beyond Nyquist ({2 * psize:.3f} Å at "
                         f"{psize:.4f} Å/px)")
    m = None if mask is None else check_mask(mask, box, psize)
    if isinstance(regulariser, str) and regulariser not in ("fsc", "none"):
        try:
            regulariser = float(regulariser)
        except ValueError:
            raise InputError(f"--regulariser {regulariser!r}: expected fsc, none or a number") from None
    if not isinstance(regulariser, str) and not (np.isfinite(regulariser) and regulariser >= 0):
        raise InputError(f"--regulariser {regulariser}: a constant must be finite and >= 0")
    w = None
    if weights is not None:
        if weights not in store.fields:
            raise InputError(f"{store.path}: --weights field {weights} not found")
        w = numeric_values(store.table([weights]).column(0)).astype(np.float64)
        if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise InputError(f"{store.path}: --weights {weights} must be one finite value >= 0 per particle")
    split = g["split"]
    generated = split is None
    if generated:
        split = random_split(store.n, seed)
    elif not np.all((split == 0) | (split == 1)):
        raise InputError(f"{store.path}: {SPLIT_FIELD} must be 0 or 1 (cryoSPARC halves)")
    if split.min() == split.max():
        raise InputError(f"{store.path}: all particles are in one half ({SPLIT_FIELD}); both halves are needed")
    t_read = time.perf_counter()
    model = Reconstructor(box, psize, pad=pad, symmetry=symmetry, max_resolution_A=max_resolution_A,
                          regulariser=regulariser, tau2_fudge=tau2_fudge, device=device,
                          partition_size=partition_size)
    model.fit(lambda a, b: store.read_images(a, b, finite=True), g["rot"], g["shifts_px"], split, ctf=g["ctf"], weights=w, mask=m)
    t_fit = time.perf_counter()
    with atomic_path(final) as tmp:  # the whole directory appears at once, or nothing
        tmp.mkdir()
        files = {"map": write_map(tmp / "map.mrc", model.map_, psize),
                 "half_A": write_map(tmp / "map_half_A.mrc", model.half_maps_[0], psize),
                 "half_B": write_map(tmp / "map_half_B.mrc", model.half_maps_[1], psize),
                 "filtered": write_map(tmp / "map_filtered.mrc", model.map_filtered_, psize)}
        fsc_doc = _fsc_json(model, m is not None, box, psize)
        (tmp / "fsc.json").write_text(json.dumps(fsc_doc, indent=1))
        if plots:
            from cryoframe.plot import save_figure
            from cryoframe.plot.fsc import fsc_figure

            curves = {"unmasked": model.fsc_}
            if model.fsc_masked_ is not None:
                curves["masked"] = model.fsc_masked_
            save_figure(fsc_figure(model.frequencies_, curves, title=f"FSC ({store.path.name})"), tmp / "fsc")
        if generated:
            _write_split_store(store, tmp / "particles.cf", split, seed)
        summary = {
            "store": str(store.path), "out": str(final), "n_particles": store.n,
            "particles_per_half": {"A": model.n_per_half_[0], "B": model.n_per_half_[1]},
            "split": (f"random (seed {seed}), written to particles.cf as {SPLIT_FIELD}" if generated
                      else SPLIT_FIELD),
            "symmetry": symmetry.upper(), "symmetry_operators": nsym, "box_px": box, "psize_A": psize,
            "pad": pad, "ctf": ctf, "weights": weights, "max_resolution_A": max_resolution_A,
            "regulariser": regulariser, "tau2_fudge": tau2_fudge, "mask": None if mask is None else str(Path(mask).absolute()),
            "device": device, "resolution_A": model.resolution_,
            "files": {k: str(final / v.name) for k, v in files.items()},
            "timings_s": {"read_metadata": t_read - t0, **model.timings_, "fit": t_fit - t_read,
                          "write": time.perf_counter() - t_fit},
        }
        (tmp / "model.json").write_text(json.dumps(summary, indent=1))
    return summary


def _fsc_json(model: Any, masked: bool, box: int, psize: float) -> dict[str, Any]:
    shells = []
    for i, f in enumerate(model.frequencies_):
        shells.append({"shell": i, "frequency_1_per_A": float(f), "resolution_A": float(1 / f) if f > 0 else None,
                       "fsc": float(model.fsc_[i]),
                       "fsc_masked": float(model.fsc_masked_[i]) if model.fsc_masked_ is not None else None})
    return {"box_px": box, "psize_A": psize, "masked": masked,
            "0.143": model.resolution_["0.143"], "0.5": model.resolution_["0.5"],
            "resolution_A": {"unmasked": model.resolution_unmasked_, "masked": model.resolution_ if masked else None},
            "half_maps": ["map_half_A.mrc", "map_half_B.mrc"], "shells": shells}


def _write_split_store(store: ParticleStore, path: Path, split: np.ndarray, seed: int) -> None:
    from cryoframe.schema import arrow_field
    from cryoframe.schema.types import numeric_array
    from cryoframe.storage.store import StoreWriter

    t = store.table()
    col = numeric_array(split.astype("<u4"))
    field = arrow_field(SPLIT_FIELD, np.dtype("<u4"), ())
    if SPLIT_FIELD in t.column_names:
        t = t.drop_columns([SPLIT_FIELD])
    t = t.append_column(field, col)
    with StoreWriter(path, op="reconstruct-split", params={"seed": seed}, inputs=[store], parent=store) as w:
        w.write_metadata(t)
        w.link_images(store)
        opt = store.optics()
        if opt is not None:
            w.write_optics(opt)
        w.commit(psize_A=store.psize_A, box_px=store.box, source=store.manifest.get("source"))

