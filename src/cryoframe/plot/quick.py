"""Job plots drawn with matplotlib's object API directly (no HoloViews/Bokeh import, no pyplot).

:mod:`cryoframe.plot.figures` builds interactive HoloViews figures; importing and rendering them
costs seconds, more than a whole ``subset`` run on 5e6 particles.  The jobs' summary plots are
drawn here instead: ``<stem>.png`` plus a self-contained ``<stem>.html`` that shows the PNG and
carries the plotted numbers as JSON (counts, edges, mixture), so nothing is lost for later
re-plotting.  Files are written atomically (temporary name + rename).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["histogram_png", "viewing_png"]

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
_DPI = 110


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _write(fig: Any, stem: Path, title: str, data: dict[str, Any]) -> list[Path]:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, pil_kwargs={"compress_level": 1})  # zlib level 6 costs 30 ms more
    png = buf.getvalue()
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            f"<script type='application/json' id='data'>{json.dumps(data)}</script></body></html>")
    out = []
    for suffix, payload in ((".png", png), (".html", page.encode())):
        path = stem.with_name(stem.name + suffix)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
        out.append(path)
    return out


def histogram_png(stem: str | os.PathLike[str], counts: np.ndarray, edges: np.ndarray, *, xlabel: str,
                  title: str = "", gmm: dict[str, Any] | None = None, thresholds: Sequence[float] | None = None,
                  set_bounds: Sequence[tuple[float, float]] | None = None, n_total: int | None = None) -> list[Path]:
    """Histogram (``counts`` per bin between ``edges``, in the statistic's unit) with the GMM
    components drawn as expected particles per bin (``weight * N * binwidth * pdf``), their sum,
    dashed thresholds and shaded set ranges; see :func:`cryoframe.plot.histogram_figure`."""
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    n = float(counts.sum()) if n_total is None else float(n_total)
    lo, hi = float(edges[0]), float(edges[-1])
    ths = [float(t) for t in (thresholds or []) if np.isfinite(t)]
    if ths:
        margin = 0.02 * (hi - lo)
        lo, hi = min(lo, min(ths) - margin), max(hi, max(ths) + margin)
    fig = _figure(10.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.stairs(counts, edges, fill=True, facecolor="#b8c2cc", edgecolor="#8a96a3", linewidth=0.3,
              label=f"particles (N = {int(round(n)):,})")
    ymax = float(counts.max()) if counts.size else 1.0
    if gmm is not None:
        w = np.asarray(gmm["weights"], dtype=np.float64)
        mu = np.asarray(gmm["means"], dtype=np.float64)
        sd = np.sqrt(np.asarray(gmm["variances"], dtype=np.float64))
        bw = (float(edges[-1]) - float(edges[0])) / max(counts.size, 1)
        x = np.linspace(lo, hi, 600)
        comps = w[:, None] * n * bw * np.exp(-0.5 * ((x - mu[:, None]) / sd[:, None]) ** 2) \
            / (sd[:, None] * math.sqrt(2 * math.pi))
        for k in range(w.size):
            ax.plot(x, comps[k], color=_PALETTE[k % len(_PALETTE)], linewidth=1.6,
                    label=f"comp {k}: w={w[k]:.2f} μ={mu[k]:.4g} σ={sd[k]:.3g}")
        ax.plot(x, comps.sum(axis=0), color="black", linestyle="--", linewidth=1.4, label="GMM sum")
        ymax = max(ymax, float(comps.sum(axis=0).max()))
    ymax = ymax * 1.12 if ymax > 0 else 1.0
    for b, (s0, s1) in enumerate(set_bounds or []):
        s0, s1 = max(float(s0), lo), min(float(s1), hi)
        if s1 >= s0:
            color = _PALETTE[b % len(_PALETTE)]
            ax.axvspan(s0, s1, color=color, alpha=0.13, linewidth=0)
            ax.text(0.5 * (s0 + s1), ymax * 0.985, f"set {b}", ha="center", va="top", color=color, fontsize=10)
    for t in ths:
        ax.axvline(t, color="#333333", linestyle="--", linewidth=1.2)
    ax.set(xlim=(lo, hi), ylim=(0, ymax), xlabel=xlabel, ylabel="particles per bin", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.075, right=0.73, bottom=0.12, top=0.92)  # fixed: tight_layout costs 0.2 s a figure
    data = {"counts": counts.tolist(), "edges": edges.tolist(), "xlabel": xlabel, "gmm": gmm,
            "thresholds": ths, "set_bounds": [list(b) for b in (set_bounds or [])], "n_total": n}
    return _write(fig, Path(stem), title or xlabel, data)


def viewing_png(stem: str | os.PathLike[str], azimuth_deg: np.ndarray, elevation_deg: np.ndarray, *,
                title: str = "", bins: tuple[int, int] = (72, 36)) -> list[Path]:
    """Particle counts over azimuth (x, -180..180°) and elevation (y, -90..90°), log colour scale."""
    from matplotlib.colors import LogNorm

    az = np.asarray(azimuth_deg, dtype=np.float64).ravel()
    el = np.asarray(elevation_deg, dtype=np.float64).ravel()
    ok = np.isfinite(az) & np.isfinite(el)
    h, xe, ye = np.histogram2d(az[ok], el[ok], bins=bins, range=((-180.0, 180.0), (-90.0, 90.0)))
    z = h.T.copy()
    z[z == 0] = np.nan
    fig = _figure(8.0, 4.0)
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.13, top=0.91)
    ax = fig.add_subplot(1, 1, 1)
    peak = float(np.nanmax(z)) if np.isfinite(z).any() else 1.0
    im = ax.pcolormesh(xe, ye, z, cmap="viridis", norm=LogNorm(vmin=1.0, vmax=max(peak, 2.0)))
    ax.set_facecolor("#f2f2f2")
    fig.colorbar(im, ax=ax, label="particles per bin", format="%g")  # plain labels: no mathtext parsing
    title = title or f"viewing directions ({int(ok.sum()):,} particles)"
    ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="azimuth (°)", ylabel="elevation (°)", title=title,
           xticks=[-180, -120, -60, 0, 60, 120, 180], yticks=[-90, -60, -30, 0, 30, 60, 90])
    return _write(fig, Path(stem), title, {"counts": h.T.tolist(), "azimuth_edges": xe.tolist(),
                                           "elevation_edges": ye.tolist()})
