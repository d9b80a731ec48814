"""Subset particles by statistic (cryoSPARC "Subset Particles by Statistic", see shared seeds/000).

One pass over the store's Parquet partitions computes the statistic (a lazy column expression);
the GMM is fitted by distributed EM (one pass per iteration) or thresholds are applied; a second
streamed pass routes every particle to exactly one set store (or the dropped store), each
referencing the input's images.  Outputs land in ``--out DIR`` atomically (temp dir + rename):
``summary.json``, ``set_NNN.cf`` (+ ``dropped.cf``, ``missing.cf``), optional ``set_NNN.cs|star``,
and ``plots/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryoframe.errors import InputError, StoreError
from cryoframe.query.stats import resolve_statistic, statistic_values
from cryoframe.storage.atomic import atomic_path, check_output, write_json_atomic
from cryoframe.storage.store import ParticleStore, StoreWriter

__all__ = ["SubsetResult", "subset"]

log = logging.getLogger(__name__)

DROPPED = -1
MISSING = -2


@dataclass
class SubsetResult:
    """What a subset run produced: per-set stores, the dropped/missing stores, the fitted model."""

    out: Path
    summary: dict[str, Any]
    sets: list[ParticleStore] = field(default_factory=list)
    dropped: ParticleStore | None = None
    missing: ParticleStore | None = None
    model: Any = None


def _labels_gmm(v: np.ndarray, components: int, min_prob: float | None, seed: int, tol: float,
                max_iter: int, device: str) -> tuple[np.ndarray, Any, dict[str, Any], np.ndarray]:
    from cryoframe.algorithms.gmm import GaussianMixture

    if components < 1:
        raise InputError("--components must be at least 1")
    gmm = GaussianMixture(n_components=components, tol=tol, max_iter=max_iter, random_state=seed,
                          device=device).fit(v)
    order = np.argsort(gmm.means_.ravel())
    rank = np.empty_like(order)
    rank[order] = np.arange(components)
    if min_prob is not None and not 0 <= min_prob <= 1:
        raise InputError(f"--min-prob must be in [0, 1], not {min_prob}")
    labels = np.empty(len(v), dtype=np.int16)
    pbest = np.empty(len(v), dtype=np.float32)
    step = 4_000_000  # bounded (n, K) probabilities
    for a in range(0, len(v), step):
        proba = gmm.predict_proba(v[a : a + step])
        best = proba.argmax(axis=1)
        pb = proba[np.arange(len(best)), best]
        lab = rank[best].astype(np.int16)
        if min_prob is not None:
            lab[pb < min_prob] = DROPPED
        labels[a : a + step] = lab
        pbest[a : a + step] = pb
    info = {
        "weights": gmm.weights_[order].tolist(),
        "means": gmm.means_.ravel()[order].tolist(),
        "variances": gmm.covariances_.reshape(components, -1)[:, 0][order].tolist(),
        "log_likelihood": float(gmm.lower_bound_),
        "n_iter": int(gmm.n_iter_),
        "converged": bool(gmm.converged_),
    }
    return labels, gmm, info, pbest


def _labels_thresholds(v: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    t = np.asarray(list(thresholds), dtype=np.float64)
    if t.size == 0:
        raise InputError("--mode thresholds needs --thresholds T1[,T2,...]")
    if np.any(np.diff(t) <= 0):
        raise InputError(f"--thresholds must be strictly increasing, got {t.tolist()}")
    return np.searchsorted(t, v, side="right").astype(np.int16)


def _collect(frame: Any, n: int) -> np.ndarray:
    """The ``value`` column as one float64 array, filled a few partitions at a time (no 2x copy)."""
    import dask

    out = np.empty(n, dtype=np.float64)
    parts = frame["value"].to_delayed()
    pos = 0
    group = 4
    for i in range(0, len(parts), group):
        for p in dask.compute(*parts[i : i + group]):
            a = p.to_numpy(dtype=np.float64)
            out[pos : pos + len(a)] = a
            pos += len(a)
    if pos != n:
        raise StoreError(f"statistic has {pos} values for {n} particles (store metadata changed?)")
    return out


def _set_stats(values: np.ndarray, labels: np.ndarray, n_sets: int, step: int = 4_000_000) -> list[dict[str, Any]]:
    """count/mean/std/min/max of the statistic per set, accumulated in chunks (float64, centred)."""
    cnt = np.zeros(n_sets, np.int64)
    s1 = np.zeros(n_sets)
    mn = np.full(n_sets, np.inf)
    mx = np.full(n_sets, -np.inf)
    for a in range(0, len(values), step):
        v, lab = values[a : a + step], labels[a : a + step]
        ok = lab >= 0
        v, lab = v[ok], lab[ok].astype(np.int64)
        cnt += np.bincount(lab, minlength=n_sets)
        s1 += np.bincount(lab, weights=v, minlength=n_sets)
        np.minimum.at(mn, lab, v)
        np.maximum.at(mx, lab, v)
    mean = np.where(cnt > 0, s1 / np.maximum(cnt, 1), 0.0)
    s2 = np.zeros(n_sets)
    for a in range(0, len(values), step):
        v, lab = values[a : a + step], labels[a : a + step]
        ok = lab >= 0
        lab = lab[ok].astype(np.int64)
        s2 += np.bincount(lab, weights=(v[ok] - mean[lab]) ** 2, minlength=n_sets)
    out: list[dict[str, Any]] = []
    for k in range(n_sets):
        if cnt[k] == 0:
            out.append({"count": 0, "mean": None, "std": None, "min": None, "max": None})
        else:
            out.append({"count": int(cnt[k]), "mean": float(mean[k]), "std": float(np.sqrt(s2[k] / cnt[k])),
                        "min": float(mn[k]), "max": float(mx[k])})
    return out


def subset(
    store: ParticleStore,
    out: str | os.PathLike[str],
    *,
    by: str,
    mode: str = "gmm",
    components: int = 2,
    min_prob: float | None = None,
    thresholds: Sequence[float] = (),
    initial: ParticleStore | None = None,
    class_indices: Sequence[int] | None = None,
    class_agg: str = "sum",
    on_missing: str = "error",
    export_format: str | None = None,
    project_dir: str | None = None,
    seed: int = 0,
    tol: float = 1e-3,
    max_iter: int = 100,
    plots: bool = True,
    device: str = "cpu",
    overwrite: bool = False,
) -> SubsetResult:
    """Split ``store`` into sets by statistic ``by``; see the module docstring for outputs."""
    if mode not in ("gmm", "thresholds"):
        raise InputError(f"--mode must be gmm or thresholds, not {mode!r}")
    if on_missing not in ("error", "drop", "separate"):
        raise InputError(f"--on-missing must be error, drop or separate, not {on_missing!r}")
    if export_format not in (None, "cs", "star"):
        raise InputError(f"--format must be cs or star, not {export_format!r}")
    out = check_output(out, overwrite)
    stat, fields = resolve_statistic(by, store)
    if mode == "thresholds":
        _labels_thresholds(np.zeros(1), thresholds)  # validate before any work
    frame = statistic_values(store, by, initial=initial, class_indices=class_indices, class_agg=class_agg,
                             project_dir=project_dir)
    values = _collect(frame, store.n)
    n = len(values)
    finite = np.isfinite(values)
    n_missing = int(n - finite.sum())
    if n_missing and on_missing == "error":
        raise InputError(f"{n_missing} of {n} particles have no finite value of {by} (field "
                         f"{', '.join(fields)}); choose --on-missing drop or separate")
    labels = np.full(n, MISSING if on_missing == "separate" else DROPPED, dtype=np.int16)
    v = values if not n_missing else values[finite]
    if v.size == 0:
        raise InputError(f"no particle has a finite value of {by}")
    gmm_info: dict[str, Any] | None = None
    model = None
    if mode == "gmm":
        lab, model, gmm_info, _ = _labels_gmm(v, components, min_prob, seed, tol, max_iter, device)
        n_sets = components
    else:
        lab = _labels_thresholds(v, thresholds)
        n_sets = len(thresholds) + 1
    if n_missing:
        labels[finite] = lab
    else:
        labels = lab
    n_dropped = int((labels == DROPPED).sum())
    n_dropped_prob = int((lab == DROPPED).sum())

    with atomic_path(out) as tmp:
        tmp.mkdir()
        summary = _write_outputs(store, tmp, out, labels, values, n_sets, by=by, stat_fields=fields, mode=mode,
                                 initial=initial, params={
                                     "statistic": by, "mode": mode, "components": components if mode == "gmm" else None,
                                     "min_prob": min_prob, "thresholds": list(thresholds) if mode == "thresholds"
                                     else None, "class_indices": list(class_indices) if class_indices else None,
                                     "class_agg": class_agg, "on_missing": on_missing, "seed": seed, "tol": tol,
                                     "max_iter": max_iter, "initial": str(initial.path) if initial else None},
                                 export_format=export_format, plots=plots, gmm_info=gmm_info)
        summary.update(n_input=n, n_dropped=n_dropped, n_dropped_min_prob=n_dropped_prob, n_missing=n_missing,
                       unit=stat.unit, description=stat.description)
        write_json_atomic(tmp / "summary.json", summary)
    res = SubsetResult(out=out, summary=summary, model=model)
    res.sets = [ParticleStore(out / s["path"]) for s in summary["sets"]]
    if (out / "dropped.cf").exists():
        res.dropped = ParticleStore(out / "dropped.cf")
    if (out / "missing.cf").exists():
        res.missing = ParticleStore(out / "missing.cf")
    return res


def _write_outputs(store: ParticleStore, tmp: Path, out: Path, labels: np.ndarray, values: np.ndarray, n_sets: int,
                   *, by: str, stat_fields: list[str], mode: str, initial: ParticleStore | None,
                   params: dict[str, Any], export_format: str | None, plots: bool,
                   gmm_info: dict[str, Any] | None) -> dict[str, Any]:
    names = {k: f"set_{k:03d}.cf" for k in range(n_sets)}
    if (labels == DROPPED).any():
        names[DROPPED] = "dropped.cf"
    if (labels == MISSING).any():
        names[MISSING] = "missing.cf"
    inputs: list[Any] = [store] + ([initial] if initial is not None else [])
    writers = {k: StoreWriter(tmp / nm, op="subset", params={**params, "set": k if k >= 0 else nm[:-3]},
                              inputs=inputs, parent=store) for k, nm in names.items()}
    has_pose = "alignments3D/pose" in store.fields
    poses: dict[int, list[np.ndarray]] = {k: [] for k in range(n_sets)}
    try:
        start = 0
        for batch in store.iter_batches():
            m = batch.num_rows
            lab = labels[start : start + m]
            for k, w in writers.items():
                sel = np.nonzero(lab == k)[0]
                w.write_metadata(batch.take(sel))
                if has_pose and k >= 0 and sel.size and sum(len(p) for p in poses[k]) < 200_000:
                    col = batch.column("alignments3D/pose").take(sel)
                    poses[k].append(col.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, 3))
            start += m
        stores = {k: w.derive(store) for k, w in writers.items()}
    finally:
        for w in writers.values():
            w.close()
    sets = []
    per_set = _set_stats(values, labels, n_sets)
    for k in range(n_sets):
        entry = {"index": k, **per_set[k], "path": names[k]}
        if export_format:
            from cryoframe.storage.exporters import export_cs, export_star

            target = tmp / f"set_{k:03d}.{export_format}"
            (export_cs if export_format == "cs" else export_star)(stores[k], target)
            entry["export"] = target.name
        sets.append(entry)
    summary: dict[str, Any] = {"statistic": by, "fields": stat_fields, "mode": mode, "input": str(store.path),
                               "initial": str(initial.path) if initial else None, "parameters": params,
                               "sets": sets, "dropped_path": names.get(DROPPED), "missing_path": names.get(MISSING)}
    if gmm_info is not None:
        summary["gmm"] = gmm_info
    if plots:
        summary["plots"] = _plots(tmp / "plots", values, sets, by, params, gmm_info, poses)
    return summary


def _plots(pdir: Path, values: np.ndarray, set_summaries: list[dict[str, Any]], by: str, params: dict[str, Any],
           gmm_info: dict[str, Any] | None, poses: dict[int, list[np.ndarray]]) -> list[str]:
    from cryoframe import plot

    pdir.mkdir()
    fin = np.isfinite(values)
    n_fin = int(fin.sum())
    rng = np.random.default_rng(0)
    sample = values[rng.integers(0, len(values), min(len(values), 2_000_000))] if len(values) > 2_000_000 else values
    sample = sample[np.isfinite(sample)]
    lo, hi = np.quantile(sample, [0.0005, 0.9995]) if sample.size > 100 else (sample.min(), sample.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = np.zeros(100, dtype=np.int64)
    edges = np.linspace(lo, hi, 101)
    for a in range(0, len(values), 4_000_000):
        c = values[a : a + 4_000_000]
        c = np.clip(c[np.isfinite(c)], lo, hi)
        counts += np.histogram(c, bins=100, range=(lo, hi))[0]
    bounds = []
    for e in set_summaries:
        if e["count"]:
            bounds.append((e["min"], e["max"]))
    fig = plot.histogram_figure(counts, edges, xlabel=by, title=f"{by}: {len(values)} particles",
                                gmm=gmm_info, thresholds=params.get("thresholds"), set_bounds=bounds,
                                n_total=n_fin)
    written = [p.name for p in plot.save_figure(fig, pdir / "histogram")]
    for k, parts in poses.items():
        if not parts:
            continue
        az, el = plot.viewing_directions_from_rotvec(np.concatenate(parts))
        fig = plot.viewing_direction_figure(az, el, title=f"set {k}: viewing directions")
        written += [p.name for p in plot.save_figure(fig, pdir / f"viewing_set_{k:03d}")]
    return written
