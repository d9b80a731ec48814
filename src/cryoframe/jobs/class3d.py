"""3D classification job (cryoSPARC 3D Classification, RELION Class3D ``--skip_align``): a store with
poses -> a new store with per-particle classes, class volumes, per-class particle sets, model.json
and plots.

Outputs (cryoSPARC names; ``.star`` export gives ``rlnClassNumber`` 1-based): ``alignments3D/class``
(u4, 0-based), ``alignments3D/class_posterior`` (maximum posterior), ``alignments3D/class_ess``,
``alignments3D/alpha`` (per-particle scale used), ``alignments_class3D_<k>/class_posterior`` per class
and ``alignments3D_multi/class_posterior`` (K,) / ``class_ess`` (for ``subset --by ess3d``).
``extras/``: ``class_<k>.mrc`` (voxel size of the working box) and ``volumes.zarr``, ``consensus.mrc``,
``model.json``, plots (PNG + HTML), ``classes/class_<k>.cf`` (disjoint particle sets by maximum
posterior, images linked) and the checkpoint ``class3d_checkpoint/`` that ``--continue`` resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cryoframe.errors import InputError
from cryoframe.geometry.fourier import band_box, fourier_crop, resample_volume
from cryoframe.schema import arrow_field, numpy_to_arrow
from cryoframe.schema.types import numeric_values
from cryoframe.storage.store import ParticleStore, StoreWriter

__all__ = ["DEFAULTS", "class3d"]

CKPT = "class3d_checkpoint"
#: defaults of the parameters ``--continue`` may take from the checkpoint (None = unspecified)
DEFAULTS: dict[str, Any] = {
    "classes": 10, "iters": 25, "target_resolution_A": None, "solvent_mask": None, "focus_mask": None,
    "scale": "none", "init": "simple", "class_similarity": 0.5, "oem_epochs": 2, "oem_batch": 1000,
    "oem_lr": 0.4, "switch_threshold": 2.0, "rms_threshold": None, "hard": False, "fsc_filter": True,
    "tau2_fudge": 4.0, "cross_half": False, "auto_mask": True, "starts": 1, "seed": 0, "ctf": True, "pad": 2, "partition_size": 2000,
}
#: may change on --continue (they do not change the state of the run)
FREE_ON_CONTINUE = ("iters", "switch_threshold", "rms_threshold")
STALE_RELION = ("rlnClassNumber", "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples",
                "rlnLogLikeliContribution", "rlnNormCorrection")


def _working_box(box: int, psize: float, target: float | None) -> int:
    """Even box whose Nyquist is at most ``target`` Å (the input box when ``target`` is None)."""
    if target is None:
        return box
    nyq = 2.0 * psize
    if not target >= nyq - 1e-9:
        raise InputError(f"--target-resolution {target} Å is beyond Nyquist ({nyq:.3f} Å at {psize:.4f} Å/px)")
    return band_box(box, psize, target)


def _resolve(store: ParticleStore, given: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Parameters: explicit ones, else the checkpoint's (``--continue``), else :data:`DEFAULTS`."""
    if not resume:
        return {k: (given[k] if given.get(k) is not None else v) for k, v in DEFAULTS.items()}
    ckpt = store.extras_dir() / CKPT
    if not (ckpt / "state.json").is_file() or "class3d" not in [s["op"] for s in store.lineage]:
        raise InputError(f"{store.path}: --continue needs a store written by class3d with its checkpoint ({ckpt})")
    prev = json.loads((store.extras_dir() / "model.json").read_text())["parameters"]
    out = {}
    for k, v in DEFAULTS.items():
        g = given.get(k)
        if g is not None and k not in FREE_ON_CONTINUE and prev.get(k) != g:
            raise InputError(f"--continue: {k}={g!r} differs from the checkpoint's {prev.get(k)!r} "
                             f"(leave it out to continue with the checkpoint's)")
        out[k] = g if g is not None else prev.get(k, v)
    return out


def class3d(store: ParticleStore, out: str | os.PathLike[str], *, classes: int | None = None,
            iters: int | None = None, target_resolution_A: float | None = None, solvent_mask: str | None = None,
            focus_mask: str | None = None, scale: str | None = None, init: str | None = None,
            class_similarity: float | None = None, oem_epochs: int | None = None, oem_batch: int | None = None,
            oem_lr: float | None = None, switch_threshold: float | None = None, rms_threshold: float | None = None,
            hard: bool | None = None, fsc_filter: bool | None = None, tau2_fudge: float | None = None,
            cross_half: bool | None = None, auto_mask: bool | None = None, starts: int | None = None,
            seed: int | None = None, ctf: bool | None = None, pad: int | None = None,
            partition_size: int | None = None, device: str = "cpu", resume: bool = False, plots: bool = True,
            overwrite: bool = False) -> ParticleStore:
    """Classify ``store``'s particles (fixed poses) into 3D classes; returns the output store.

    Parameters left None take :data:`DEFAULTS` (or, with ``resume``, the checkpoint's values).
    See :class:`cryoframe.algorithms.class3d.Class3D` for their meaning; ``target_resolution_A`` (Å)
    sets the working box (Fourier crop) and its Nyquist.
    """
    from cryoframe.algorithms.class3d import Class3D
    from cryoframe.jobs._volumes import SPLIT_FIELD, particle_geometry
    from cryoframe.jobs.class2d import noise_groups
    from cryoframe.jobs.reconstruct import check_mask, random_split

    given = dict(classes=classes, iters=iters, target_resolution_A=target_resolution_A,
                 solvent_mask=None if solvent_mask is None else str(Path(solvent_mask).absolute()),
                 focus_mask=None if focus_mask is None else str(Path(focus_mask).absolute()), scale=scale,
                 init=init, class_similarity=class_similarity, oem_epochs=oem_epochs, oem_batch=oem_batch,
                 oem_lr=oem_lr, switch_threshold=switch_threshold, rms_threshold=rms_threshold, hard=hard,
                 fsc_filter=fsc_filter, tau2_fudge=tau2_fudge, cross_half=cross_half, auto_mask=auto_mask, starts=starts, seed=seed, ctf=ctf, pad=pad,
                 partition_size=partition_size)
    p = _resolve(store, given, resume)
    for name, choices in (("scale", ("optimal", "input", "none")), ("init", ("simple", "pca"))):
        if p[name] not in choices:
            raise InputError(f"--{name} must be one of {', '.join(choices)} (got {p[name]!r})")
    if p["classes"] < 1 or p["iters"] < 1 or p["starts"] < 1 or p["oem_batch"] < 1 or p["oem_epochs"] < 0:
        raise InputError("--classes, --iters, --starts and --oem-batch must be >= 1 (--oem-epochs >= 0)")
    if not 0.0 <= p["class_similarity"] <= 1.0 or not 0.0 < p["oem_lr"] <= 1.0:
        raise InputError("--class-similarity must be in [0, 1] and --oem-lr in (0, 1]")
    g = particle_geometry(store, ctf=p["ctf"])
    box, psize, n = g["box"], g["psize_A"], store.n
    if p["classes"] > n:
        raise InputError(f"--classes {p['classes']} is larger than the number of particles ({n})")
    bw = _working_box(box, psize, p["target_resolution_A"])
    pw = psize * box / bw
    masks = {}
    for key in ("solvent_mask", "focus_mask"):
        if p[key] is not None:
            m = check_mask(p[key], box, psize)
            masks[key] = np.clip(resample_volume(m, bw), 0.0, 1.0)
    alpha = None
    if p["scale"] == "input":
        if "alignments3D/alpha" not in store.fields:
            raise InputError(f"{store.path}: --scale input needs alignments3D/alpha (use optimal or none)")
        alpha = numeric_values(store.table(["alignments3D/alpha"]).column(0)).astype(np.float64)
    split = g["split"] if g["split"] is not None else random_split(n, p["seed"])
    if g["split"] is not None and (not np.all((split == 0) | (split == 1)) or split.min() == split.max()):
        raise InputError(f"{store.path}: {SPLIT_FIELD} must hold both halves 0 and 1")
    if resume and not any((store.extras_dir() / CKPT).glob("state.npz")):
        raise InputError(f"{store.path}: --continue needs a class3d checkpoint in {store.extras_dir() / CKPT}")
    images = store.images(finite=True)
    if bw != box:
        images = images.map_blocks(fourier_crop, bw, chunks=(images.chunks[0], bw, bw), dtype=np.float32)
    overwrite = overwrite or (resume and Path(out).absolute() == store.path)
    with StoreWriter(out, op="class3d", params={**p, "resume": resume}, inputs=[store], parent=store,
                     overwrite=overwrite) as w:
        ckpt = w.extras_dir() / CKPT
        if resume:
            shutil.copytree(store.extras_dir() / CKPT, ckpt)
        model = Class3D(p["classes"], p["iters"], pad=p["pad"], init=p["init"], class_similarity=p["class_similarity"],
                        oem_epochs=p["oem_epochs"], oem_batch=p["oem_batch"], oem_lr=p["oem_lr"],
                        switch_threshold=p["switch_threshold"], rms_threshold=p["rms_threshold"], hard=p["hard"],
                        fsc_filter=p["fsc_filter"], tau2_fudge=p["tau2_fudge"], scale=p["scale"], starts=p["starts"],
                        cross_half=p["cross_half"], auto_mask=p["auto_mask"],
                        random_state=p["seed"], device=device, partition_size=p["partition_size"],
                        checkpoint_dir=str(ckpt))
        try:
            model.fit(images, g["rot"], g["shifts_px"] * (bw / box), split, psize_A=pw, ctf=g["ctf"], alpha=alpha,
                      groups=noise_groups(store), solvent_mask=masks.get("solvent_mask"),
                      focus_mask=masks.get("focus_mask"), resume=resume)
        except (ValueError, FileNotFoundError) as exc:
            if resume:
                raise InputError(f"{store.path}: cannot continue from its checkpoint ({exc})") from exc
            raise
        _write_metadata(w, store, model)
        if model.solvent_mask_auto_ and model.solvent_mask_ is not None:  # the automatic mask, at the particles' box
            from cryoframe.jobs._volumes import write_map

            write_map(w.extras_dir() / "solvent_mask_auto.mrc",
                      np.clip(resample_volume(model.solvent_mask_, box), 0.0, 1.0).astype(np.float32), psize)
        w.link_images(store)
        opt = store.optics()
        if opt is not None:
            w.write_optics(opt)
        from cryoframe.jobs._class3d_report import write_extras

        write_extras(w.extras_dir(), model, p, pw, box, psize, plots)
        result = w.commit(psize_A=store.psize_A, box_px=store.box, source=store.manifest.get("source"))
    _class_sets(result, p["classes"])
    return result


def _write_metadata(w: StoreWriter, store: ParticleStore, model: Any) -> None:
    K = model.n_classes
    post = model.posterior_.astype("<f4")
    cols: dict[str, np.ndarray] = {
        "alignments3D/class": model.labels_.astype("<u4"),
        "alignments3D/class_posterior": model.class_posterior_.astype("<f4"),
        "alignments3D/class_ess": model.ess_.astype("<f4"),
        "alignments3D/alpha": model.alpha_.astype("<f4"),
        "alignments3D_multi/class_posterior": post,
        "alignments3D_multi/class_ess": model.ess_.astype("<f4"),
        **{f"alignments_class3D_{k}/class_posterior": post[:, k].copy() for k in range(K)},
    }
    start = 0
    schema = None
    drop = set(cols) | set(STALE_RELION) | {c for c in store.fields if c.startswith("alignments_class3D_")}
    for batch in store.iter_batches():
        m = batch.num_rows
        t = batch.select([c for c in batch.column_names if c not in drop])
        for name, v in cols.items():
            t = t.append_column(arrow_field(name, v.dtype, v.shape[1:]), numpy_to_arrow(v[start:start + m]))
        if schema is None:
            schema = t.schema
        w.write_metadata(pa.Table.from_arrays(t.columns, schema=schema))
        start += m


def _class_sets(result: ParticleStore, k: int) -> None:
    """``extras/classes/class_<k>.cf``: the particles of each class by maximum posterior."""
    from cryoframe.query.expr import filter_store
    from cryoframe.storage.atomic import atomic_path

    with atomic_path(result.extras_dir() / "classes") as tmp:
        tmp.mkdir()
        for c in range(k):
            filter_store(result, tmp / f"class_{c:03d}.cf", f"`alignments3D/class` == {c}")
