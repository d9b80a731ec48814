"""Extras of the 3D classification job: class volumes (.mrc + Zarr), consensus, model.json and the
plots (class sizes per iteration, ESS histogram, per-class FSC, central slices of every class)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_extras"]


def write_extras(d: Path, model: Any, params: dict[str, Any], psize_w: float, box_in: int, psize_in: float,
                 plots: bool) -> None:
    """Write ``d``'s volumes, ``model.json`` and (``plots``) figures for a fitted ``Class3D``."""
    import zarr

    from cryoframe.jobs._volumes import write_map

    vols = model.volumes_.astype(np.float32)
    K, b = vols.shape[0], vols.shape[-1]
    z = zarr.create_array(store=str(d / "volumes.zarr"), shape=vols.shape, chunks=(1, b, b, b), dtype="float32")
    z[:] = vols
    for k in range(K):
        write_map(d / f"class_{k:03d}.mrc", vols[k], psize_w)
    write_map(d / "consensus.mrc", model.consensus_, psize_w)
    sizes = model.class_sizes_
    per_class = []
    for k in range(K):
        sel = model.labels_ == k
        res = float(model.resolution_A_[k])
        per_class.append({"class": k, "size": int(sizes[k]), "fraction": float(sizes[k] / max(1, sizes.sum())),
                          "resolution_A": res if np.isfinite(res) else None,
                          "mean_ess": float(model.ess_[sel].mean()) if sel.any() else None,
                          "volume": f"class_{k:03d}.mrc"})
    doc = {"n_classes": K, "n_particles": int(len(model.labels_)), "input_box_px": box_in, "input_psize_A": psize_in,
           "box_px": b, "psize_A": psize_w, "nyquist_A": 2 * psize_w, "n_iter": int(model.n_iter_),
           "oem_iterations": int(model.n_oem_), "parameters": params, "classes": per_class,
           "mean_ess": float(model.ess_.mean()), "history": model.history_,
           "fsc": {"frequency_1_per_A": model.frequencies_.tolist(), "curves": model.fsc_.tolist()},
           "timings_s": model.timings_}
    (d / "model.json").write_text(json.dumps(doc, indent=1, default=float))
    if plots:
        _plots(d, model, psize_w)


def _plots(d: Path, model: Any, psize_w: float) -> None:
    from cryoframe import plot
    from cryoframe.plot.figures import _hv
    from cryoframe.plot.fsc import fsc_figure

    hv = _hv()  # holoviews with its plotting extensions loaded

    hist = [h for h in model.history_ if h.get("class_sizes")]
    K = model.n_classes
    it = [h["iteration"] for h in hist]
    curves = [hv.Curve((it, [h["class_sizes"][k] for h in hist]), "iteration", "particles", label=f"class {k}")
              for k in range(K)]
    plot.save_figure(hv.Overlay(curves).opts(title="class sizes per iteration (class flow)"), d / "class_flow")
    edges = np.linspace(1.0, max(float(K), 1.0 + 1e-6), 41)
    counts, edges = np.histogram(model.ess_, bins=edges)
    plot.save_figure(plot.histogram_figure(counts, edges, xlabel="class ESS", title="per-particle class ESS"),
                     d / "ess_histogram")
    plot.save_figure(fsc_figure(model.frequencies_, {f"class {k}": model.fsc_[k] for k in range(K)},
                                title="per-class FSC (half sums)"), d / "class_fsc")
    v = model.volumes_
    c = v.shape[-1] // 2
    tiles, labels = [], []
    for k in range(K):
        for name, sl in (("xy", v[k, c]), ("xz", v[k, :, c]), ("yz", v[k, :, :, c])):
            tiles.append(sl)
            labels.append(f"{k} {name}")
    plot.save_figure(plot.gallery_figure(np.stack(tiles), labels, ncols=3, title="central slices per class"),
                     d / "class_slices")
