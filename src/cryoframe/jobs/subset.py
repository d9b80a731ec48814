"""Subset particles by statistic (cryoSPARC "Subset Particles by Statistic", see shared seeds/000).

The statistic is read straight from Parquet when it is a plain field (else one pass over the
partitions evaluates its expression); the GMM is fitted by distributed EM (one pass per
iteration) or thresholds are applied; every particle goes to exactly one set (or dropped/missing),
each written as a *view* of the input (:mod:`cryoframe.storage.view`: a selection bitmap or index
list + the added columns -- the statistic when derived, the GMM posterior as a computed column --
no metadata copy).  Outputs land in ``--out DIR`` atomically (temp dir + rename):
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
import pyarrow as pa

from cryoframe.errors import InputError, StoreError
from cryoframe.plot.worker import PlotWorker
from cryoframe.query.stats import STATISTICS, resolve_statistic, statistic_values
from cryoframe.schema.types import numeric_array, numeric_values
from cryoframe.storage.atomic import atomic_path, check_output, write_json_atomic
from cryoframe.storage.store import ParticleStore

__all__ = ["SubsetResult", "subset"]

log = logging.getLogger(__name__)

DROPPED = -1
MISSING = -2


@dataclass
class SubsetResult:
    """What a subset run produced: per-set stores, the dropped/missing stores, the fitted mixture
    (``fit``; ``model`` is the same as a fitted scikit-learn-style estimator, built on first use)."""

    out: Path
    summary: dict[str, Any]
    sets: list[ParticleStore] = field(default_factory=list)
    dropped: ParticleStore | None = None
    missing: ParticleStore | None = None
    fit: Any = None

    @property
    def model(self) -> Any:
        """The GMM as a fitted :class:`cryoframe.algorithms.gmm.GaussianMixture` (None for thresholds)."""
        if self.fit is None:
            return None
        from cryoframe.algorithms.gmm import GaussianMixture

        return GaussianMixture.from_fit(self.fit, tol=self.summary["parameters"]["tol"],
                                        max_iter=self.summary["parameters"]["max_iter"],
                                        random_state=self.summary["parameters"]["seed"])


def _labels_gmm(v: np.ndarray, components: int, min_prob: float | None, seed: int, tol: float,
                max_iter: int, device: str) -> tuple[np.ndarray, Any, dict[str, Any]]:
    from cryoframe.algorithms.gmm_em import fit_mixture

    if components < 1:
        raise InputError("--components must be at least 1")
    import time

    t0 = time.perf_counter()  # the EM core alone (no scikit-learn import): a subset pays for the fit only
    gmm = fit_mixture(v, components, tol=tol, max_iter=max_iter, random_state=seed, device=device)
    fit_seconds = time.perf_counter() - t0
    order = np.argsort(gmm.means)
    rank = np.empty_like(order)
    rank[order] = np.arange(components)
    if min_prob is not None and not 0 <= min_prob <= 1:
        raise InputError(f"--min-prob must be in [0, 1], not {min_prob}")
    from cryoframe.algorithms._gmm_kernels import kernel_params

    # label = argmax_k log(w_k N(x; mu_k, var_k)) (first k on ties, as argmax), one component at a time over
    # cache-sized blocks: no (n, K) temporaries, no exp/log unless --min-prob needs the posterior
    cst, pc, mpc = kernel_params(gmm.weights, gmm.means, gmm.precisions_cholesky)
    labels = np.empty(len(v), dtype=np.int16)
    step = 1 << 16
    m = min(len(v), step)
    best, lp, lab = np.empty(m), np.empty(m), np.empty(m, dtype=np.int16)
    for a in range(0, len(v), step):
        x = v[a : a + step]
        nb = len(x)
        bb, tb, lb = best[:nb], lp[:nb], lab[:nb]
        for j in range(components):
            np.multiply(x, pc[j], out=tb)
            tb -= mpc[j]
            np.square(tb, out=tb)
            tb *= -0.5
            tb += cst[j]
            if j == 0:
                bb[...] = tb
                lb[...] = rank[0]
            else:
                better = tb > bb
                np.copyto(bb, tb, where=better)
                lb[better] = rank[j]
        if min_prob is not None:  # max posterior = 1 / Σ_k exp(lp_k - lp_best)
            tot = np.zeros(nb)
            for j in range(components):
                y = x * pc[j] - mpc[j]
                tot += np.exp(cst[j] - 0.5 * y * y - bb)
            lb[1.0 / tot < min_prob] = DROPPED
        labels[a : a + nb] = lb
    info = {
        "weights": gmm.weights[order].tolist(),
        "means": gmm.means[order].tolist(),
        "variances": gmm.variances[order].tolist(),
        "log_likelihood": float(gmm.lower_bound),
        "n_iter": int(gmm.n_iter),
        "converged": bool(gmm.converged),
        "fit_seconds": fit_seconds,
    }
    return labels, gmm, info


def _is_field(by: str, stat: Any, fields: list[str]) -> bool:
    """Whether statistic ``by`` is the value of its one field verbatim (then views need not store it)."""
    derived = ("class_prob3d", "helical_tilt", "motion", "defocus")
    if stat.difference or len(fields) != 1 or by in derived or by not in STATISTICS:
        return False
    return not (by in ("ess2d", "ess3d") and fields[0].endswith("class_posterior"))


def _labels_thresholds(v: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    t = np.asarray(list(thresholds), dtype=np.float64)
    if t.size == 0:
        raise InputError("--mode thresholds needs --thresholds T1[,T2,...]")
    if not np.all(np.isfinite(t)):  # NaN compares false: every particle fell into the first set
        raise InputError(f"--thresholds must be finite numbers, got {t.tolist()}")
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


def _first_true(mask: np.ndarray, count: int, step: int = 1 << 20) -> np.ndarray:
    """Positions of the first ``count`` True entries of ``mask`` (no full-length index array)."""
    out, found = [], 0
    for a in range(0, len(mask), step):
        idx = np.flatnonzero(mask[a : a + step])[: count - found] + a
        out.append(idx)
        found += len(idx)
        if found >= count:
            break
    return np.concatenate(out) if out else np.empty(0, np.int64)


def _set_stats(values: np.ndarray, labels: np.ndarray, n_sets: int, step: int = 1 << 22) -> list[dict[str, Any]]:
    """count/mean/std/min/max of the statistic per set, accumulated in chunks (float64; the
    variance combines per-chunk centred sums, Chan et al.)."""
    cnt = np.zeros(n_sets, np.int64)
    mean = np.zeros(n_sets)
    m2 = np.zeros(n_sets)
    mn = np.full(n_sets, np.inf)
    mx = np.full(n_sets, -np.inf)
    for a in range(0, len(values), step):
        v, lab = values[a : a + step], labels[a : a + step]
        for k in range(n_sets):
            x = v[lab == k]
            if not x.size:
                continue
            mk = float(x.mean())
            qk = float(((x - mk) ** 2).sum())
            n0, n1 = cnt[k], x.size
            d = mk - mean[k]
            mean[k] += d * n1 / (n0 + n1)
            m2[k] += qk + d * d * n0 * n1 / (n0 + n1)
            cnt[k] += n1
            mn[k] = min(mn[k], float(x.min()))
            mx[k] = max(mx[k], float(x.max()))
    out: list[dict[str, Any]] = []
    for k in range(n_sets):
        if cnt[k] == 0:
            out.append({"count": 0, "mean": None, "std": None, "min": None, "max": None})
        else:
            out.append({"count": int(cnt[k]), "mean": float(mean[k]), "std": float(np.sqrt(m2[k] / cnt[k])),
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
    import time

    clock = {"start": time.perf_counter()}
    import contextlib

    with contextlib.ExitStack() as stack:  # the plot worker starts now: matplotlib loads while we read and fit
        worker = stack.enter_context(PlotWorker()) if plots else None
        identity = initial is None and _is_field(by, stat, fields)
        if identity:  # the statistic is a column: read it straight from Parquet (no dataframe graph)
            values = store.read_numeric(fields[0], np.float64)
        else:
            frame = statistic_values(store, by, initial=initial, class_indices=class_indices, class_agg=class_agg,
                                     project_dir=project_dir)
            values = _collect(frame, store.n)
        clock["read"] = time.perf_counter()
        n = len(values)
        step = 1 << 22  # count non-finite values in chunks: no n-byte mask unless some are missing
        n_missing = sum(int(np.count_nonzero(~np.isfinite(values[a : a + step]))) for a in range(0, n, step))
        finite = np.isfinite(values) if n_missing else None
        if n_missing and on_missing == "error":
            raise InputError(f"{n_missing} of {n} particles have no finite value of {by} (field "
                             f"{', '.join(fields)}); choose --on-missing drop or separate")
        v = values if not n_missing else values[finite]
        if v.size == 0:
            raise InputError(f"no particle has a finite value of {by}")
        gmm_info: dict[str, Any] | None = None
        model = None
        if mode == "gmm":
            lab, model, gmm_info = _labels_gmm(v, components, min_prob, seed, tol, max_iter, device)
            n_sets = components
        else:
            lab = _labels_thresholds(v, thresholds)
            n_sets = len(thresholds) + 1
        clock["fit_and_label"] = time.perf_counter()
        if n_missing:
            labels = np.full(n, MISSING if on_missing == "separate" else DROPPED, dtype=np.int16)
            labels[finite] = lab
            del finite
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
                                     export_format=export_format, plots=worker, gmm_info=gmm_info,
                                     identity=identity)
            clock["write_and_plots"] = time.perf_counter()
            steps = list(clock)
            summary["timing_s"] = {k: round(clock[k] - clock[p], 4) for p, k in zip(steps, steps[1:], strict=False)}
            summary.update(n_input=n, n_dropped=n_dropped, n_dropped_min_prob=n_dropped_prob, n_missing=n_missing,
                           unit=stat.unit, description=stat.description)
            write_json_atomic(tmp / "summary.json", summary)
    res = SubsetResult(out=out, summary=summary, fit=model)
    res.sets = [ParticleStore(out / s["path"]) for s in summary["sets"]]
    if (out / "dropped.cf").exists():
        res.dropped = ParticleStore(out / "dropped.cf")
    if (out / "missing.cf").exists():
        res.missing = ParticleStore(out / "missing.cf")
    return res


def _write_outputs(store: ParticleStore, tmp: Path, out: Path, labels: np.ndarray, values: np.ndarray, n_sets: int,
                   *, by: str, stat_fields: list[str], mode: str, initial: ParticleStore | None,
                   params: dict[str, Any], export_format: str | None, plots: PlotWorker | None,
                   gmm_info: dict[str, Any] | None, identity: bool = False) -> dict[str, Any]:
    names = {k: f"set_{k:03d}.cf" for k in range(n_sets)}
    if (labels == DROPPED).any():
        names[DROPPED] = "dropped.cf"
    if (labels == MISSING).any():
        names[MISSING] = "missing.cf"
    from cryoframe.storage.view import read_rows, write_view

    per_set = _set_stats(values, labels, n_sets)
    if plots is not None:  # the histogram is drawn (in the plot worker) while the views are written
        (tmp / "plots").mkdir()
        _histogram_plot(plots, tmp / "plots", values, per_set, by, params, gmm_info)
    # every output is a view of ``store``: a selection + what the job adds (no metadata copy)
    stat_col = stat_fields[0] if identity else "subset/statistic"
    computed = {"subset/probability": {"op": "gmm_max_posterior", "of": stat_col, **{
        k: gmm_info[k] for k in ("weights", "means", "variances")}}} if gmm_info is not None else None
    has_pose = "alignments3D/pose" in store.fields
    stores = {}
    for k, nm in names.items():
        mask = labels == k
        added = None
        if not identity:
            from cryoframe.schema.types import arrow_field

            added = pa.Table.from_arrays([numeric_array(values[mask])],
                                         schema=pa.schema([arrow_field("subset/statistic", np.dtype("<f8"))]))
        stores[k] = write_view(tmp / nm, store, mask, op="subset", params={**params, "set": k if k >= 0 else nm[:-3]},
                               added=added, computed=computed, inputs=[initial] if initial is not None else [])
        if has_pose and plots is not None and k >= 0 and mask.any():
            from cryoframe.plot.figures import viewing_directions_from_rotvec

            first = _first_true(mask, 200_000)
            col = read_rows(store, first, ["alignments3D/pose"]).column(0)
            az, el = viewing_directions_from_rotvec(numeric_values(col).reshape(-1, 3))
            plots.add("viewing_png", stem=tmp / "plots" / f"viewing_set_{k:03d}", azimuth_deg=az, elevation_deg=el,
                      title=f"set {k}: viewing directions")
    sets = []
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
    if plots is not None:
        summary["plots"] = plots.wait()
    return summary


def _histogram_plot(plots: PlotWorker, pdir: Path, values: np.ndarray, set_summaries: list[dict[str, Any]], by: str,
                    params: dict[str, Any], gmm_info: dict[str, Any] | None) -> None:
    """Counts in 100 bins over the 0.05-99.95 % quantile range (of a 200k sample), set ranges and the
    fitted components, handed to the plot worker."""
    n = len(values)
    rng = np.random.default_rng(0)
    sample = values[rng.integers(0, n, 200_000)] if n > 200_000 else values
    sample = sample[np.isfinite(sample)]
    lo, hi = np.quantile(sample, [0.0005, 0.9995]) if sample.size > 100 else (sample.min(), sample.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = np.zeros(100, dtype=np.int64)
    edges = np.linspace(lo, hi, 101)
    n_fin = 0
    for a in range(0, n, 1 << 22):
        c = values[a : a + (1 << 22)]
        c = c[np.isfinite(c)] if not np.isfinite(c.sum()) else c
        n_fin += len(c)
        counts += np.histogram(np.clip(c, lo, hi), bins=100, range=(lo, hi))[0]
    bounds = [(e["min"], e["max"]) for e in set_summaries if e["count"]]
    gmm = {k: gmm_info[k] for k in ("weights", "means", "variances")} if gmm_info else None
    plots.add("histogram_png", stem=pdir / "histogram", counts=counts, edges=edges, xlabel=by,
              title=f"{by}: {n} particles", gmm=gmm, thresholds=params.get("thresholds"), set_bounds=bounds,
              n_total=n_fin)
