"""Ab-initio reconstruction job: a store of particles without poses -> a store with 3D alignments,
K class volumes, per-class sets, model.json and plots.

Output store ``out`` (images linked to the input's, optics copied): every metadata field of the used
particles except stale 3D alignments, plus ``alignments3D/pose`` (rotation vector, rad),
``alignments3D/shift`` (px of ``alignments3D/psize_A``, the translation that centres the particle),
``alignments3D/psize_A``, ``alignments3D/class``, ``alignments3D/class_posterior`` (of the assigned
class) and ``alignments3D_multi/class_posterior`` (K,).  ``extras/``: ``class_XXX.mrc`` (voxel size
in the header) and ``volumes.zarr`` (K, b, b, b), ``model.json`` (parameters, per-iteration
history: resolution, learning rate, minibatch, class sizes, time; per-class resolution),
``slices.png/.html`` (central slices per class over iterations), ``class_sizes.png/.html``,
``abinitio_checkpoint/`` (for ``--continue``), and the sets ``sets/class_XXX.cf`` (particles of
class k, :func:`cryoframe.query.expr.filter_store`) and, for K = 1 with ``--particles``,
``sets/unused.cf`` (the particles not drawn).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cryoframe.errors import InputError, StoreError
from cryoframe.geometry.symmetry import symmetry_matrices
from cryoframe.jobs._volumes import write_map
from cryoframe.schema import arrow_field, numpy_to_arrow
from cryoframe.storage.ctf import read_ctf_params
from cryoframe.storage.store import ParticleStore, StoreWriter

__all__ = ["abinitio"]

CKPT = "abinitio_checkpoint"
STALE = ("alignments3D/", "alignments3D_multi/")
STALE_RELION = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginX",
                "rlnOriginY", "rlnClassNumber", "rlnMaxValueProbDistribution", "rlnRandomSubset")


def _check_images(store: ParticleStore) -> None:
    if not store.has_images:
        raise InputError(f"{store.path}: ab-initio reconstruction needs particle images (store is metadata-only)")
    try:
        store.images_path()
    except StoreError as exc:
        raise InputError(str(exc)) from None


def _ctf(store: ParticleStore, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The CTF parameters of particles ``rows`` (phase shift zero when the store has none)."""
    p = read_ctf_params(store)
    p.setdefault("phase_shift_rad", np.zeros(store.n))
    return {k: v[rows] for k, v in p.items()}


def abinitio(store: ParticleStore, out: str | os.PathLike[str], *, classes: int = 1, particles: int | None = None,
             symmetry: str = "C1", max_resolution_A: float = 12.0, initial_resolution_A: float | None = None,
             initial_iterations: int = 40, intermediate_iterations: int | None = None, final_iterations: int = 0,
             initial_minibatch: int = 300, final_minibatch: int = 600, initial_learning_rate: float = 0.3,
             final_learning_rate: float = 0.2, noise_model: str = "coloured", noise_init_sigmascale: float = 1.0,
             noise_priorw: float = 50.0, class_similarity: float = 0.1,
             class_similarity_anneal_start: int | None = None, class_similarity_anneal_end: int | None = None,
             coarse_step_deg: float = 15.0, fine_step_deg: float = 1.875, shift_range_px: float = 6.0,
             shift_step_px: float = 2.0, n_candidates: int = 4, final_passes: int = 1, ctf: bool = True,
             seed: int = 0, device: str = "cpu", resume: bool = False, plots: bool = True,
             overwrite: bool = False, starts: int = 4, final_coarse_step_deg: float = 15.0,
             normalise_noise: bool = False) -> ParticleStore:
    """Ab-initio reconstruction of ``classes`` volumes from ``store``'s images; returns the output store.

    See :class:`cryoframe.algorithms.abinitio.AbInitio` for the parameters (resolutions in Å, shifts
    in px).  ``particles``: use a seeded random subset of this many particles.
    """
    from cryoframe.algorithms.abinitio import AbInitio

    _check_images(store)
    n_all = store.n
    symmetry_matrices(symmetry)
    if particles is not None and not 1 <= particles <= n_all:
        raise InputError(f"--particles {particles} must be between 1 and the number of particles ({n_all})")
    if classes > (particles or n_all):
        raise InputError(f"--classes {classes} is larger than the number of particles ({particles or n_all})")
    psize = store.pixel_size()
    ckpt_src = store.extras_dir() / CKPT
    if resume and not (ckpt_src / "abinitio_state.npz").is_file():
        raise InputError(f"{store.path}: --continue needs an ab-initio checkpoint in {ckpt_src}")
    if particles is not None and particles < n_all:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 171]))
        used = np.sort(rng.choice(n_all, size=particles, replace=False))
    else:
        used = np.arange(n_all)
    ctfp = _ctf(store, used) if ctf else None
    params = {"classes": classes, "particles": particles, "symmetry": symmetry, "max_resolution_A": max_resolution_A,
              "initial_resolution_A": initial_resolution_A, "initial_iterations": initial_iterations,
              "intermediate_iterations": intermediate_iterations, "final_iterations": final_iterations,
              "initial_minibatch": initial_minibatch, "final_minibatch": final_minibatch,
              "initial_learning_rate": initial_learning_rate, "final_learning_rate": final_learning_rate,
              "noise_model": noise_model, "noise_init_sigmascale": noise_init_sigmascale,
              "noise_priorw": noise_priorw, "class_similarity": class_similarity,
              "class_similarity_anneal_start": class_similarity_anneal_start,
              "class_similarity_anneal_end": class_similarity_anneal_end, "coarse_step_deg": coarse_step_deg,
              "fine_step_deg": fine_step_deg, "shift_range_px": shift_range_px, "shift_step_px": shift_step_px,
              "n_candidates": n_candidates, "final_passes": final_passes, "ctf": ctf, "seed": seed, "resume": resume,
              "starts": starts, "final_coarse_step_deg": final_coarse_step_deg, "normalise_noise": normalise_noise}
    model = AbInitio(classes, psize_A=psize, symmetry=symmetry, max_resolution_A=max_resolution_A,
                     initial_resolution_A=initial_resolution_A, initial_iterations=initial_iterations,
                     intermediate_iterations=intermediate_iterations, final_iterations=final_iterations,
                     initial_minibatch=initial_minibatch, final_minibatch=final_minibatch,
                     initial_learning_rate=initial_learning_rate, final_learning_rate=final_learning_rate,
                     noise_model=noise_model, noise_init_sigmascale=noise_init_sigmascale, noise_priorw=noise_priorw,
                     class_similarity=class_similarity, class_similarity_anneal_start=class_similarity_anneal_start,
                     class_similarity_anneal_end=class_similarity_anneal_end, coarse_step_deg=coarse_step_deg,
                     fine_step_deg=fine_step_deg, shift_range_px=shift_range_px, shift_step_px=shift_step_px,
                     n_candidates=n_candidates, final_passes=final_passes, random_state=seed, device=device,
                     n_starts=starts, final_coarse_step_deg=final_coarse_step_deg, normalise_noise=normalise_noise)
    model._validate(len(used), int(store.box or 0))  # bad parameters fail before anything is written
    overwrite = overwrite or (resume and Path(out).absolute() == store.path)
    with StoreWriter(out, op="abinitio", params=params, inputs=[store], parent=store, overwrite=overwrite) as w:
        ckpt = w.extras_dir() / CKPT
        if resume:
            shutil.copytree(ckpt_src, ckpt)
        model.checkpoint_dir = str(ckpt)
        images = store.images(finite=True)
        if len(used) < n_all:
            images = images[used]
        model.fit(images, ctfp, resume=resume)
        # the count used (default: by K; a continued run's: its checkpoint's), recorded when the store commits
        params["intermediate_iterations"] = model.schedule_.intermediate_iterations
        t = store.table()
        main = t.take(pa.array(used)) if len(used) < n_all else t
        w.write_metadata(_with_alignments(main, model, psize))
        w.link_images(store)
        opt = store.optics()
        if opt is not None:
            w.write_optics(opt)
        summary = _write_extras(w.extras_dir(), model, psize, plots, store, len(used))
        res = w.commit(psize_A=store.psize_A, box_px=store.box, source=store.manifest.get("source"))
    try:
        _write_sets(res, store, t, used, classes, summary)
    except BaseException:
        shutil.rmtree(res.path, ignore_errors=True)
        raise
    return res


def _with_alignments(t: pa.Table, model: Any, psize: float) -> pa.Table:
    n = t.num_rows
    K = model.n_classes
    cols = {
        "alignments3D/pose": (model.poses_.astype("<f4"), (3,)),
        "alignments3D/shift": (model.shifts_px_.astype("<f4"), (2,)),
        "alignments3D/psize_A": (np.full(n, psize, "<f4"), ()),
        "alignments3D/class": (model.labels_.astype("<u4"), ()),
        "alignments3D/class_posterior": (model.posteriors_.max(1).astype("<f4"), ()),
        "alignments3D_multi/class_posterior": (model.posteriors_.astype("<f4").reshape(n, K), (K,)),
    }
    keep = [c for c in t.column_names if not c.startswith(STALE) and c not in STALE_RELION]
    t = t.select(keep)
    for name, (v, shape) in cols.items():
        t = t.append_column(arrow_field(name, v.dtype, shape), numpy_to_arrow(v))
    return t


def _write_extras(d: Path, model: Any, psize: float, plots: bool, store: ParticleStore, n: int) -> dict[str, Any]:
    import zarr

    K = model.n_classes
    vols = model.volumes_.astype(np.float32)
    box = vols.shape[-1]
    z = zarr.create_array(store=str(d / "volumes.zarr"), shape=vols.shape, chunks=(1, box, box, box),
                          dtype="float32")
    z[:] = vols
    files = [write_map(d / f"class_{k:03d}.mrc", vols[k], psize).name for k in range(K)]
    sizes = np.bincount(model.labels_, minlength=K)
    summary = {
        "store": str(store.path), "n_particles": n, "n_classes": K, "box_px": box, "psize_A": psize,
        "working_box_px": model.working_box_, "symmetry": model.symmetry.upper(),
        "schedule": model.schedule_.as_dict(),
        "classes": [{"class": k, "count": int(sizes[k]), "fraction": float(sizes[k] / max(n, 1)),
                     "resolution_A": None if not np.isfinite(model.resolution_A_[k]) else float(model.resolution_A_[k]),
                     "volume": files[k]} for k in range(K)],
        "empty_class_events": model.events_, "history": model.history_,  # events: re-initialisations, starts
    }
    (d / "model.json").write_text(json.dumps(summary, indent=1, default=float))
    if plots:
        _plots(d, model)
    return summary


def _plots(d: Path, model: Any) -> None:
    import holoviews as hv

    from cryoframe import plot

    snaps = model.slices_
    K = model.n_classes
    tiles = np.stack([s["slices"][k] for s in snaps for k in range(K)])
    labels = [f"it {s['iteration']} class {k}" for s in snaps for k in range(K)]
    plot.save_figure(plot.gallery_figure(tiles, labels, ncols=K, title="central slices per class over iterations"),
                     d / "slices")
    it = np.array([h["iteration"] for h in model.history_])
    sizes = np.array([h["class_sizes"] for h in model.history_])
    curves = [hv.Curve((it, sizes[:, k]), "iteration", "class size (fraction)", label=f"class {k}") for k in range(K)]
    plot.save_figure(hv.Overlay(curves).opts(title="class sizes"), d / "class_sizes")


def _write_sets(res: ParticleStore, store: ParticleStore, t: pa.Table, used: np.ndarray, classes: int,
                summary: dict[str, Any]) -> None:
    from cryoframe.query.expr import filter_store

    sets = res.extras_dir() / "sets"
    sets.mkdir()
    for k in range(classes):
        filter_store(res, sets / f"class_{k:03d}.cf", f"`alignments3D/class` == {k}")
    if classes == 1 and len(used) < store.n:
        rest = np.setdiff1d(np.arange(store.n), used)
        with StoreWriter(sets / "unused.cf", op="abinitio-unused", params={"n": len(rest)}, inputs=[store],
                         parent=store) as w:
            w.write_metadata(t.take(pa.array(rest)))
            w.link_images(store)
            opt = store.optics()
            if opt is not None:
                w.write_optics(opt)
            w.commit(psize_A=store.psize_A, box_px=store.box, source=store.manifest.get("source"))
