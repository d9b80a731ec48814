"""2D classification job: Class2D over a store's images -> a new store with per-particle 2D
alignments plus class averages, model.json, gallery and convergence plots in ``extras/``.

``--continue`` resumes from the input store's checkpoint (written after every iteration).
Outputs follow cryoSPARC's 2D-job field names; the ``.star`` export gives RELION's ``_data.star``
labels (rlnClassNumber 1-based, rlnAnglePsi, rlnOriginX/YAngst, rlnMaxValueProbDistribution,
rlnNrOfSignificantSamples, rlnLogLikeliContribution).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cryoframe.algorithms.class2d.rank import (
    DEFAULT_MAX_MISFIT,
    DEFAULT_MIN_EVIDENCE,
    DEFAULT_THRESHOLD,
    FEATURES,
    WEIGHTS,
    rank_model,
)
from cryoframe.errors import InputError
from cryoframe.schema import arrow_field, numpy_to_arrow
from cryoframe.storage.atomic import write_json_atomic
from cryoframe.storage.store import ParticleStore, StoreWriter

__all__ = ["class2d", "select2d"]

OUT_FIELDS = {  # field -> (numpy dtype, shape)
    "alignments2D/class": ("<u4", ()), "alignments2D/class_posterior": ("<f4", ()), "alignments2D/pose": ("<f4", ()),
    "alignments2D/shift": ("<f4", (2,)), "alignments2D/psize_A": ("<f4", ()), "alignments2D/error": ("<f4", ()),
    "alignments2D/class_ess": ("<f4", ()), "alignments2D/alpha": ("<f4", ()),
    "alignments2D/n_significant": ("<f4", ()), "alignments2D/log_likelihood": ("<f4", ()),
    "alignments2D/evidence": ("<f4", ()), "alignments2D/misfit": ("<f4", ()),
}
STALE_RELION = ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginX", "rlnOriginY",
                "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples", "rlnLogLikeliContribution",
                "rlnNormCorrection")
CKPT = "class2d_checkpoint"
EVIDENCE = "alignments2D/evidence"
MISFIT = "alignments2D/misfit"


NOISE_GROUP_FIELDS = ("rlnGroupNumber", "location/micrograph_uid", "location/micrograph_path")


def noise_groups(store: ParticleStore) -> np.ndarray | None:
    """Per-particle noise-group labels as RELION uses them: ``rlnGroupNumber`` (written by
    ``select2d --regroup`` or imported from RELION), else the micrograph; None when neither exists."""
    for name in NOISE_GROUP_FIELDS:
        if name in store.fields:
            return store.table([name]).column(0).to_numpy(zero_copy_only=False)
    return None


DEFAULTS: dict[str, Any] = {
    "classes": 50, "iters": 25, "tau_fudge": 2.0, "mask_diameter_A": None, "psi_step_deg": 6.0,
    "offset_range_px": 5.0, "offset_step_px": 1.0, "ctf": True, "ctf_mode": "full", "zero_mask": True,
    "limit_e_step_resolution_A": None, "center": True, "algorithm": "em", "init": "random", "nbasis": 10,
    "seed": 0, "scale": "sample", "outliers": True,
}
"""Documented defaults of :func:`class2d`'s options (``mask_diameter_A`` None: 0.9 x box; ``limit_e_step_resolution_A``
None: no limit).  ``--continue`` takes every option not given from the checkpointed run instead."""
OPTION_NAMES = {"classes": "--classes", "iters": "--iters", "tau_fudge": "--T", "mask_diameter_A": "--mask-diameter",
                "psi_step_deg": "--psi-step", "offset_range_px": "--offset-range", "offset_step_px": "--offset-step",
                "ctf": ("--no-ctf", "--ctf"), "ctf_mode": "--ctf-mode", "zero_mask": ("--no-zero-mask", "--zero-mask"),
                "limit_e_step_resolution_A": "--limit-e-step-resolution", "center": ("--no-center", "--center"),
                "algorithm": "--algorithm", "init": "--init", "nbasis": "--nbasis", "seed": "--seed",
                "scale": "--scale", "outliers": ("--no-outliers", "--outliers")}
RESUME_FREE = {"iters"}  # may differ from the checkpointed run


def _option(name: str, value: Any) -> str:
    opt = OPTION_NAMES.get(name, name)
    if isinstance(opt, tuple):
        return opt[0] if value is False else opt[1]
    return f"{opt} {value}"


def resolve_options(store: ParticleStore, given: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The run's options: ``given`` (None = not given) over the checkpointed run's (``resume``) or
    :data:`DEFAULTS`.  With ``resume``, an option given explicitly that differs from the checkpointed
    run's raises :class:`InputError` naming it (only ``iters`` may change)."""
    if not resume:
        return {k: (given.get(k) if given.get(k) is not None else d) for k, d in DEFAULTS.items()}
    steps = [s for s in store.lineage if s["op"] == "class2d"]
    if not steps:
        raise InputError(f"{store.path}: --continue needs a store written by class2d")
    prev = {**DEFAULTS, **{k: v for k, v in steps[-1]["params"].items() if k in DEFAULTS}}
    bad = []
    for k, v in given.items():
        if v is None or k not in DEFAULTS or k in RESUME_FREE:
            continue
        same = (v == prev[k]) if not isinstance(v, float | int) or isinstance(v, bool) or prev[k] is None \
            else np.isclose(float(v), float(prev[k]), rtol=1e-9, atol=0)
        if not same:
            bad.append(f"{_option(k, v)} (the checkpoint has {_option(k, prev[k])})")
    if bad:
        raise InputError(f"{store.path}: --continue keeps the options of the run it continues; "
                         f"cannot change {'; '.join(bad)}")
    return {k: (given[k] if k in RESUME_FREE and given.get(k) is not None else prev[k]) for k in DEFAULTS}


def class2d(store: ParticleStore, out: str | os.PathLike[str], *, classes: int | None = None,
            iters: int | None = None, tau_fudge: float | None = None, mask_diameter_A: float | None = None,
            psi_step_deg: float | None = None, offset_range_px: float | None = None,
            offset_step_px: float | None = None, ctf: bool | None = None, ctf_mode: str | None = None,
            zero_mask: bool | None = None, limit_e_step_resolution_A: float | None = None,
            center: bool | None = None, algorithm: str | None = None, init: str | None = None,
            nbasis: int | None = None, seed: int | None = None, scale: str | None = None,
            outliers: bool | None = None, device: str = "cpu",
            resume: bool = False, plots: bool = True, overwrite: bool = False) -> ParticleStore:
    """Classify ``store``'s particle images into ``classes`` 2D classes; returns the output store.

    Options left None take :data:`DEFAULTS`, or with ``resume`` (``--continue``) the values of the
    class2d run that wrote ``store`` (its checkpoint); ``iters`` counts all iterations, resumed ones
    included.  Units: ``mask_diameter_A`` and ``limit_e_step_resolution_A`` Å, ``psi_step_deg`` deg,
    offsets px.
    """
    from cryoframe.algorithms.class2d import Class2D
    from cryoframe.storage.ctf import read_ctf_params

    if not store.has_images:
        raise InputError(f"{store.path}: 2D classification needs particle images (store is metadata-only)")
    box = store.box
    if box is None:
        raise InputError(f"{store.path}: manifest.json has no box_px; cannot classify the images")
    ckpt_src = store.extras_dir() / CKPT
    if resume and not any(ckpt_src.glob("*.npz")):
        raise InputError(f"{store.path}: --continue needs a 2D classification checkpoint in {ckpt_src}")
    o = resolve_options(store, {
        "classes": classes, "iters": iters, "tau_fudge": tau_fudge, "mask_diameter_A": mask_diameter_A,
        "psi_step_deg": psi_step_deg, "offset_range_px": offset_range_px, "offset_step_px": offset_step_px,
        "ctf": ctf, "ctf_mode": ctf_mode, "zero_mask": zero_mask, "limit_e_step_resolution_A": limit_e_step_resolution_A,
        "center": center, "algorithm": algorithm, "init": init, "nbasis": nbasis, "seed": seed, "scale": scale,
        "outliers": outliers}, resume)
    if o["classes"] > store.n:
        raise InputError(f"--classes {o['classes']} is larger than the number of particles ({store.n})")
    psize = store.pixel_size(default=1.0)  # mixed pixel sizes are an error; none known: 1 Å/px (no CTF needed)
    if o["mask_diameter_A"] is not None and o["mask_diameter_A"] > box * psize:
        raise InputError(f"--mask-diameter {o['mask_diameter_A']} Å is larger than the box "
                         f"({box} px x {psize} Å/px = {box * psize:.1f} Å)")
    ctfp = read_ctf_params(store) if o["ctf"] else None
    params = {**o, "resume": resume}
    overwrite = overwrite or (resume and Path(out).absolute() == store.path)
    with StoreWriter(out, op="class2d", params=params, inputs=[store], parent=store, overwrite=overwrite) as w:
        ckpt = w.extras_dir() / CKPT
        if resume:
            shutil.copytree(ckpt_src, ckpt)
        model = Class2D(n_classes=o["classes"], n_iter=o["iters"], tau_fudge=o["tau_fudge"],
                        psi_step_deg=o["psi_step_deg"], offset_range_px=o["offset_range_px"],
                        offset_step_px=o["offset_step_px"], mask_diameter_A=o["mask_diameter_A"], psize_A=psize,
                        ctf=o["ctf"], ctf_mode=o["ctf_mode"], zero_mask=o["zero_mask"],
                        limit_e_step_resolution_A=o["limit_e_step_resolution_A"], center=o["center"],
                        algorithm=o["algorithm"], init=o["init"], nbasis=o["nbasis"], random_state=o["seed"],
                        scale_mode=o["scale"], outliers=o["outliers"], device=device, checkpoint_dir=str(ckpt), warm_start=resume)
        try:
            model.fit(store.images(finite=True), ctf_params=ctfp, groups=noise_groups(store))
        except InputError:  # the data's own error (e.g. a NaN image), not the checkpoint's
            raise
        except (ValueError, FileNotFoundError) as exc:
            if resume:
                raise InputError(f"{store.path}: cannot continue from its checkpoint ({exc})") from exc
            raise
        _write_metadata(w, store, model, psize)
        _write_extras(w.extras_dir(), model, psize, plots)
        return w.derive(store)


def _write_metadata(w: StoreWriter, store: ParticleStore, model: Any, psize: float) -> None:
    n = store.n
    cols: dict[str, np.ndarray] = {
        "alignments2D/class": model.labels_.astype("<u4"),
        "alignments2D/class_posterior": model.posterior_max_.astype("<f4"),
        "alignments2D/pose": np.deg2rad(model.psi_deg_).astype("<f4"),
        "alignments2D/shift": model.shifts_px_.astype("<f4"),
        "alignments2D/psize_A": np.full(n, psize, "<f4"),
        "alignments2D/error": (-model.log_likelihood_).astype("<f4"),
        "alignments2D/class_ess": model.ess_.astype("<f4"),
        "alignments2D/alpha": getattr(model, "scales_", np.ones(n)).astype("<f4"),
        "alignments2D/n_significant": np.maximum(1.0, np.round(model.ess_)).astype("<f4"),
        "alignments2D/log_likelihood": model.log_likelihood_.astype("<f4"),
        "alignments2D/evidence": model.gain_.astype("<f4"),
        "alignments2D/misfit": model.misfit_.astype("<f4"),
    }
    start = 0
    schema = None
    for batch in store.iter_batches():
        m = batch.num_rows
        keep = [c for c in batch.column_names if c not in OUT_FIELDS and c not in STALE_RELION]
        t = batch.select(keep)
        for name, (dt, shape) in OUT_FIELDS.items():
            t = t.append_column(arrow_field(name, np.dtype(dt), shape), numpy_to_arrow(cols[name][start : start + m]))
        if schema is None:
            schema = t.schema
        w.write_metadata(pa.Table.from_arrays(t.columns, schema=schema))
        start += m


def _write_extras(d: Path, model: Any, psize: float, plots: bool) -> None:
    import zarr

    from cryoframe.storage.formats.mrc import write_stack

    avgs = model.class_averages_.astype(np.float32)
    k, box = avgs.shape[0], avgs.shape[-1]
    z = zarr.create_array(store=str(d / "class_averages.zarr"), shape=avgs.shape, chunks=(min(k, 64), box, box),
                          dtype="float32")
    z[:] = avgs
    write_stack(d / "class_averages.mrcs", k, box, [avgs], psize)
    sizes = np.asarray(model.class_sizes_)
    n = int(sizes.sum()) or 1
    res = np.asarray(getattr(model, "resolution_A_", np.full(k, np.nan)), dtype=float)
    ess = model.ess_
    feats, scores = rank_model(model, sizes, psize)
    per_class = []
    for c in range(k):
        sel = model.labels_ == c
        per_class.append({"class": c, "count": int(sizes[c]), "fraction": float(sizes[c] / n),
                          "resolution_A": None if not np.isfinite(res[c]) else float(res[c]),
                          "mean_ess": float(ess[sel].mean()) if sel.any() else None,
                          "score": float(scores[c]), "features": {f: float(v[c]) for f, v in feats.items()}})
    write_json_atomic(d / "model.json", {
        "n_classes": k, "box_px": box, "psize_A": psize, "n_iter": int(model.n_iter_),
        "score": {"features": list(FEATURES), "weights": WEIGHTS, "default_threshold": DEFAULT_THRESHOLD,
                  "doc": "cryoframe.algorithms.class2d.rank"},
        "classes": per_class, "history": model.history_,
        "outliers": {"class": k, "count": int(getattr(model, "n_outliers_", 0)),
                     "enabled": bool(getattr(model, "outliers", False)),
                     "min_evidence": DEFAULT_MIN_EVIDENCE, "max_misfit": DEFAULT_MAX_MISFIT,
                     "doc": "particles that fit no class (cryoframe.algorithms.class2d.misfit): label n_classes"},
        "noise": {"groups": int(model.group_noise_spectra_.shape[0]),
                  "shell_A": [box * psize / max(s, 1) for s in range(box // 2)],
                  "spectrum": model.noise_spectrum_.tolist()}})
    if plots:
        from cryoframe import plot

        order = np.argsort(-sizes)
        fig = plot.gallery_figure(avgs[order], [f"{c}: {sizes[c]} s={scores[c]:.2f}" for c in order],
                                  title="class averages by size (class: particles, s = select2d --auto score)")
        plot.save_figure(fig, d / "class_gallery")
        _convergence(d, model.history_)


def _convergence(d: Path, history: list[dict[str, Any]]) -> None:
    import holoviews as hv

    from cryoframe import plot

    it = np.arange(1, len(history) + 1)
    ll = [h.get("log_likelihood", np.nan) for h in history]
    ch = [h.get("class_changes", h.get("fraction_changed", np.nan)) for h in history]
    fig = (hv.Curve((it, ll), "iteration", "log-likelihood").opts(title="log-likelihood")
           + hv.Curve((it, ch), "iteration", "class changes").opts(title="fraction of class changes"))
    plot.save_figure(fig, d / "convergence")


def select2d(store: ParticleStore, out: str | os.PathLike[str], *, classes: list[int] | None = None,
             auto: bool = False, threshold: float | None = None, min_evidence: float | None = None,
             max_misfit: float | None = None, regroup: int | None = None, overwrite: bool = False) -> ParticleStore:
    """Keep particles of chosen 2D classes (``classes``) or of classes scoring ≥ ``threshold``
    (``auto``; the per-class score class2d stores in model.json, see
    :mod:`cryoframe.algorithms.class2d.rank`; ``threshold`` None: its ``DEFAULT_THRESHOLD``) whose
    per-particle evidence over an empty pick (``alignments2D/evidence``, nats) is at least
    ``min_evidence`` and whose low-resolution misfit to their class (``alignments2D/misfit``) is at
    most ``max_misfit`` (None: the ranker's ``DEFAULT_MIN_EVIDENCE`` / ``DEFAULT_MAX_MISFIT`` with
    ``auto``, no limit with ``classes``).  A particle without a value (NaN) passes."""
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"--threshold must be in [0, 1] (class scores are 0-1), got {threshold}")
    for name, v in (("--min-evidence", min_evidence), ("--max-misfit", max_misfit)):
        if v is not None and not np.isfinite(float(v)):
            raise InputError(f"{name} must be a finite number, got {v}")
    if "alignments2D/class" not in store.fields or not (store.extras_dir() / "model.json").exists():
        raise InputError(f"{store.path}: no 2D classification (run cryoframe class2d first)")
    model = json.loads((store.extras_dir() / "model.json").read_text())
    k = model["n_classes"]
    if auto:
        scores = class_scores(model)
        if scores is None:
            raise InputError(f"{store.path}/extras/model.json has no class scores (written by an older class2d); "
                             "re-run cryoframe class2d on it to score the classes, or pick --classes")
        th = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        chosen = [c for c in range(k) if scores[c] >= th]
    elif classes:
        top = k if model.get("outliers", {}).get("enabled") else k - 1  # class k: the outlier class (when on)
        bad = [c for c in classes if c < 0 or c > top]
        if bad:
            raise InputError(f"--classes {bad} out of range 0..{top}" + (f" ({k}: the outliers)" if top == k else ""))
        chosen = sorted(set(classes))
    else:
        raise InputError("select2d needs --classes I,J,... or --auto")
    limits = []  # (field, "<" or ">", value): particles beyond a limit are dropped
    for field, op, given, default, flag in ((EVIDENCE, "<", min_evidence, DEFAULT_MIN_EVIDENCE, "--min-evidence"),
                                            (MISFIT, ">", max_misfit, DEFAULT_MAX_MISFIT, "--max-misfit")):
        value = default if (given is None and auto) else given
        if value is None:
            continue
        if field not in store.fields:
            if given is not None:
                raise InputError(f"{store.path}: no {field} field (written by an older class2d); re-run cryoframe "
                                 f"class2d, or leave out {flag}")
            continue  # an older class2d store: class scores only
        limits.append((field, op, float(value)))
    from cryoframe.query.expr import filter_store, match_positions

    where = f"`alignments2D/class` in {chosen}" if chosen else "`alignments2D/class` < 0"
    for field, op, value in limits:
        where += f" and not (`{field}` {op} {value!r})"  # (NaN compares false: no value passes)
    if regroup is None:
        return filter_store(store, out, where, overwrite=overwrite)
    if regroup < 1:  # 0 too: it silently meant "no regrouping" while -3 was an error
        raise InputError(f"--regroup must be at least 1, not {regroup}")
    from cryoframe.storage.view import write_view

    keep = np.zeros(store.n, dtype=bool)  # the rows of the same expression
    keep[match_positions(store, where)] = True
    t = store.table().filter(pa.array(keep))
    groups = regroup_labels(t, regroup)
    added = pa.table({"rlnGroupNumber": pa.array(groups.astype(np.int64)),
                      "rlnGroupName": pa.array([f"group_{g:03d}" for g in groups])},
                     schema=pa.schema([arrow_field("rlnGroupNumber", np.dtype("<i8")),
                                       arrow_field("rlnGroupName", np.dtype("U"))]))
    params = {"classes": chosen, "limits": [list(t) for t in limits], "regroup": regroup}
    return write_view(out, store, keep, op="select2d", params=params, added=added, overwrite=overwrite)


def regroup_labels(t: pa.Table, n_groups: int) -> np.ndarray:
    """1-based noise groups of ~equal size holding particles of similar defocus and intensity scale
    (RELION's regrouping): sort by average defocus, cut into √N bands, sort each band by scale."""
    n = t.num_rows
    n_groups = max(1, min(n_groups, n))
    if {"ctf/df1_A", "ctf/df2_A"} <= set(t.column_names):
        df = (t.column("ctf/df1_A").to_numpy().astype(float) + t.column("ctf/df2_A").to_numpy()) / 2
    else:
        df = np.zeros(n)
    scale = (t.column("alignments2D/alpha").to_numpy().astype(float) if "alignments2D/alpha" in t.column_names
             else np.ones(n))
    bands = max(1, int(round(np.sqrt(n_groups))))
    order = np.argsort(df, kind="stable")
    out = np.empty(n, dtype=np.int64)
    g0 = 0
    for b, idx in enumerate(np.array_split(order, bands)):
        per = n_groups // bands + (1 if b < n_groups % bands else 0)
        sub = idx[np.argsort(scale[idx], kind="stable")]
        for j, part in enumerate(np.array_split(sub, max(per, 1))):
            out[part] = g0 + j + 1
        g0 += max(per, 1)
    return out


def class_scores(model: dict[str, Any]) -> list[float] | None:
    """The per-class 0-1 scores stored in a class2d ``model.json`` (None when it has none); see
    :mod:`cryoframe.algorithms.class2d.rank` for the features and how they combine."""
    cl = model.get("classes", [])
    if not cl or any(c.get("score") is None for c in cl):
        return None
    return [float(c["score"]) for c in cl]
