"""Figures for particle curation: statistic histograms with GMM overlays, viewing directions, galleries.

This module only draws.  Statistics, fits and histograms of large data are computed elsewhere and passed
in as small arrays (bin counts, GMM parameters), so drawing costs the same for 1e3 or 1e8 particles.

HoloViews (and its matplotlib/bokeh backends) is imported lazily inside the functions: importing this
module is cheap.  Every figure carries options for both backends, so one object can be written as a
static PNG (matplotlib, Agg) and as a self-contained interactive HTML page (bokeh, resources inline).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cryoframe.errors import InputError
from cryoframe.storage.atomic import write_bytes_atomic

if TYPE_CHECKING:  # pragma: no cover
    import holoviews

__all__ = [
    "gallery_figure",
    "histogram_figure",
    "save_figure",
    "viewing_direction_figure",
    "viewing_directions_from_rotvec",
]

#: Tableau-10 colours: GMM components and set ranges (component k and set k share a colour).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_BACKENDS = ("matplotlib", "bokeh")
_PNG_DPI = 110


def _hv() -> Any:
    """Import holoviews and load both plotting backends without changing the current backend."""
    import holoviews as hv
    from holoviews import Store

    prev = Store.current_backend if Store.current_backend in Store.renderers else None
    for name in _BACKENDS:
        hv.renderer(name)
    if prev is not None and Store.current_backend != prev:
        Store.set_current_backend(prev)
    return hv


def _opts(obj: Any, *, mpl: dict[str, Any] | None = None, bokeh: dict[str, Any] | None = None,
          **common: Any) -> Any:
    """Apply ``common`` options to both backends plus backend-specific ones; return the new object."""
    obj = obj.opts(backend="matplotlib", **common, **(mpl or {}))
    return obj.opts(backend="bokeh", **common, **(bokeh or {}))


def _fmt(x: float) -> str:
    """About 4 significant digits, plain notation for 1e-3 <= |x| < 1e6 (e.g. 10500, 1.234, 0.0123)."""
    ax = abs(x)
    if ax == 0 or not 1e-3 <= ax < 1e6:
        return f"{x:.3g}"
    out = f"{x:.{max(0, 3 - math.floor(math.log10(ax)))}f}"
    return out.rstrip("0").rstrip(".") if "." in out else out


# --------------------------------------------------------------------------------------------- histogram
def histogram_figure(counts: np.ndarray, edges: np.ndarray, *, xlabel: str, title: str = "",
                     gmm: dict[str, Any] | None = None, thresholds: Sequence[float] | None = None,
                     set_bounds: Sequence[tuple[float, float]] | None = None,
                     n_total: int | None = None) -> holoviews.Overlay:
    """Histogram of a per-particle statistic with optional GMM components, thresholds and set ranges.

    Parameters
    ----------
    counts, edges
        Bin counts (particles per bin) and bin edges, as returned by ``np.histogram(..., density=False)``;
        ``edges`` are in the statistic's unit (the one named in ``xlabel``).  Only these are drawn, so the
        cost does not depend on the number of particles.
    xlabel
        Axis label, including the unit, e.g. ``"defocus (Å)"``.
    gmm
        1-D Gaussian mixture ``{"weights": [...], "means": [...], "variances": [...]}`` (means in the
        statistic's unit, variances in unit²; other keys are ignored).  Each component is drawn as
        ``weight * N * binwidth * pdf(x)`` (expected particles per bin), plus their sum.
    thresholds
        Values (statistic's unit) drawn as dashed vertical lines.
    set_bounds
        ``(low, high)`` per output set, shaded and labelled ``"set 0"``, ``"set 1"``, ... .
    n_total
        Number of particles the GMM describes (``N`` above); defaults to ``counts.sum()``.  Pass it when
        the histogram leaves out part of the data (e.g. clipped tails).

    Returns
    -------
    holoviews.Overlay
        One histogram, ``len(means) + 1`` curves when ``gmm`` is given, ``hv.VLine`` / ``hv.VSpan`` /
        ``hv.Text`` annotations.
    """
    hv = _hv()
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.ndim != 1 or edges.ndim != 1 or edges.size != counts.size + 1 or counts.size == 0:
        raise InputError(f"histogram needs counts (n,) and edges (n+1,), got {counts.shape} and {edges.shape}")
    if not (np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)):
        raise InputError("histogram edges must be finite and strictly increasing")
    n = float(counts.sum()) if n_total is None else float(n_total)
    thresholds = [float(t) for t in (thresholds or []) if np.isfinite(t)]
    lo, hi = float(edges[0]), float(edges[-1])
    if thresholds:
        margin = 0.02 * (hi - lo)
        lo, hi = min(lo, min(thresholds) - margin), max(hi, max(thresholds) + margin)

    label = f"particles (N = {int(round(n)):,})" if n_total is not None else "particles"
    hist = _opts(hv.Histogram((edges, counts), kdims=[xlabel], vdims=["particles per bin"], label=label),
                 mpl={"facecolor": "#b8c2cc", "edgecolor": "#8a96a3", "linewidth": 0.3},
                 bokeh={"fill_color": "#b8c2cc", "line_color": "#8a96a3", "line_width": 0.5})
    layers: list[Any] = [hist]
    ymax = float(counts.max()) if counts.size else 1.0

    if gmm is not None:
        try:
            w = np.asarray(gmm["weights"], dtype=np.float64).ravel()
            mu = np.asarray(gmm["means"], dtype=np.float64).ravel()
            var = np.asarray(gmm["variances"], dtype=np.float64).ravel()
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"gmm needs 'weights', 'means' and 'variances': {e}") from e
        if not (w.size == mu.size == var.size) or w.size == 0 or np.any(var <= 0):
            raise InputError("gmm weights, means and variances must have the same length, variances > 0")
        binwidth = (edges[-1] - edges[0]) / counts.size
        x = np.linspace(lo, hi, 600)
        sd = np.sqrt(var)
        comps = w[:, None] * n * binwidth * np.exp(-0.5 * ((x[None, :] - mu[:, None]) / sd[:, None]) ** 2) \
            / (sd[:, None] * math.sqrt(2.0 * math.pi))
        for k in range(w.size):
            lab = f"comp {k}: w={w[k]:.2f} μ={_fmt(mu[k])} σ={_fmt(sd[k])}"
            layers.append(_opts(hv.Curve((x, comps[k]), kdims=[xlabel], vdims=["particles per bin"], label=lab),
                                color=PALETTE[k % len(PALETTE)], mpl={"linewidth": 1.6},
                                bokeh={"line_width": 2}))
        total = comps.sum(axis=0)
        layers.append(_opts(hv.Curve((x, total), kdims=[xlabel], vdims=["particles per bin"], label="GMM sum"),
                            color="black", mpl={"linewidth": 1.4, "linestyle": "--"},
                            bokeh={"line_width": 2, "line_dash": "dashed"}))
        ymax = max(ymax, float(total.max()))
    ymax = ymax * 1.12 if ymax > 0 else 1.0

    for b, (s0, s1) in enumerate(set_bounds or []):
        s0, s1 = max(float(s0), lo), min(float(s1), hi)
        if not s1 >= s0:
            continue
        color = PALETTE[b % len(PALETTE)]
        layers.append(_opts(hv.VSpan(s0, s1), mpl={"facecolor": color, "alpha": 0.13, "linewidth": 0},
                            bokeh={"fill_color": color, "fill_alpha": 0.13, "line_alpha": 0}))
        layers.append(hv.Text(0.5 * (s0 + s1), ymax * 0.985, f"set {b}", halign="center", valign="top",
                              fontsize=10).opts(color=color, backend="matplotlib")
                      .opts(text_color=color, backend="bokeh"))
    for t in thresholds:
        layers.append(_opts(hv.VLine(t), color="#333333", mpl={"linewidth": 1.2, "linestyle": "--"},
                            bokeh={"line_width": 1.5, "line_dash": "dashed"}))

    return _opts(hv.Overlay(layers), title=title, xlabel=xlabel, ylabel="particles per bin",
                 xlim=(lo, hi), ylim=(0, ymax), show_grid=True, legend_position="right",
                 mpl={"fig_inches": (10.0, 4.2), "aspect": 2.0, "legend_opts": {"fontsize": 8, "frameon": False}},
                 bokeh={"width": 900, "height": 420, "legend_opts": {"label_text_font_size": "9pt"}})


# --------------------------------------------------------------------------------------------- viewing
def viewing_directions_from_rotvec(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection directions (azimuth, elevation) in degrees from cryoSPARC rotation vectors.

    ``pose`` is ``(n, 3)`` rotation vectors in radians (cryoSPARC ``alignments3D/pose``).  The projection
    direction in the map frame is the third column of ``Rotation.from_rotvec(pose).as_matrix()`` (the third
    row of RELION's matrix).  Azimuth = ``atan2(y, x)`` in (-180, 180], elevation = ``asin(z)`` in
    [-90, 90]; equivalently azimuth = RELION rot and elevation = 90 - RELION tilt.  Non-finite poses give
    NaN.
    """
    from cryoframe.geometry.rotations import pose_direction

    pose = np.asarray(pose, dtype=np.float64)
    if pose.ndim == 1 and pose.size == 3:
        pose = pose[None, :]
    if pose.ndim != 2 or pose.shape[1] != 3:
        raise InputError(f"rotation vectors must have shape (n, 3), got {pose.shape}")
    az = np.full(len(pose), np.nan)
    el = np.full(len(pose), np.nan)
    ok = np.all(np.isfinite(pose), axis=1)
    if ok.any():
        d = pose_direction(pose[ok])
        az[ok] = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
        el[ok] = np.degrees(np.arcsin(np.clip(d[:, 2], -1.0, 1.0)))
    return az, el


def viewing_direction_figure(azimuth_deg: np.ndarray, elevation_deg: np.ndarray, *, title: str = "",
                             bins: tuple[int, int] = (72, 36)) -> holoviews.Image:
    """Viewing-direction distribution: particle counts over azimuth (x) and elevation (y), log colour.

    ``azimuth_deg`` in [-180, 180] and ``elevation_deg`` in [-90, 90] (degrees, e.g. from
    :func:`viewing_directions_from_rotvec`); non-finite values are ignored.  ``bins`` = (azimuth bins,
    elevation bins) of an equirectangular grid.  Empty bins are left blank; the colour bar gives particles
    per bin on a log scale.
    """
    hv = _hv()
    az = np.asarray(azimuth_deg, dtype=np.float64).ravel()
    el = np.asarray(elevation_deg, dtype=np.float64).ravel()
    if az.shape != el.shape:
        raise InputError(f"azimuth and elevation differ in length: {az.size} vs {el.size}")
    nx, ny = int(bins[0]), int(bins[1])
    if nx < 1 or ny < 1:
        raise InputError(f"bins must be positive, got {bins}")
    ok = np.isfinite(az) & np.isfinite(el)
    h, xe, ye = np.histogram2d(az[ok], el[ok], bins=(nx, ny), range=((-180.0, 180.0), (-90.0, 90.0)))
    z = h.T.copy()  # (elevation, azimuth)
    peak = float(z.max())
    log = peak >= 2
    if log:
        z[z == 0] = np.nan  # blank on a log scale
    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
    img = hv.Image((xc, yc, z), kdims=["azimuth (°)", "elevation (°)"], vdims=["particles per bin"])
    return _opts(img, title=title or f"viewing directions ({int(ok.sum()):,} particles)",
                 cmap="viridis", colorbar=True, logz=log, clim=(1.0, max(peak, 2.0)) if log else (0.0, 1.0),
                 clabel="particles per bin", xticks=[-180, -120, -60, 0, 60, 120, 180],
                 yticks=[-90, -60, -30, 0, 30, 60, 90], xlim=(-180, 180), ylim=(-90, 90),
                 clipping_colors={"NaN": "#f2f2f2"},
                 mpl={"fig_inches": (8.0, 4.0), "aspect": 2.0},
                 bokeh={"width": 860, "height": 420, "tools": ["hover"]})


# --------------------------------------------------------------------------------------------- gallery
def _normalise_tile(img: np.ndarray) -> np.ndarray:
    """Map a tile to [0, 1] between its 0.5th and 99.5th percentiles (constant tiles become 0.5)."""
    finite = np.isfinite(img)
    if not finite.any():
        return np.full(img.shape, 0.5, dtype=np.float32)
    lo, hi = np.percentile(img[finite], [0.5, 99.5])
    if not hi > lo:
        return np.where(finite, 0.5, np.nan).astype(np.float32)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _montage(images: np.ndarray, ncols: int, pad: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tile (n, h, w) images row-major into one array; gaps of ``pad`` px are NaN.

    Returns the montage, shape ``(rows*h + (rows-1)*pad, ncols*w + (ncols-1)*pad)``, and the (row, col)
    pixel offset of each tile's top-left corner (row 0 of the montage at the top).
    """
    n, h, w = images.shape
    rows = -(-n // ncols)
    out = np.full((rows * h + (rows - 1) * pad, ncols * w + (ncols - 1) * pad), np.nan, dtype=np.float32)
    corners = []
    for i in range(n):
        r0, c0 = (i // ncols) * (h + pad), (i % ncols) * (w + pad)
        out[r0 : r0 + h, c0 : c0 + w] = _normalise_tile(images[i].astype(np.float32))
        corners.append((r0, c0))
    return out, corners


def gallery_figure(images: np.ndarray, labels: Sequence[str] | None = None, *, ncols: int | None = None,
                   title: str = "") -> holoviews.Overlay:
    """One montage image of ``(n, box, box)`` images (e.g. 2D class averages), with per-tile labels.

    Each tile is scaled on its own (0.5-99.5 percentile to black-white); tiles are laid out row-major,
    ``ncols`` per row (default ``ceil(sqrt(n))``), the first image at the top left, each image shown with
    its row 0 at the top.  The montage's coordinates are pixels.  ``labels`` (one string per image, e.g.
    particle counts) are written at each tile's top-left corner.
    """
    hv = _hv()
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[0] == 0:
        raise InputError(f"gallery needs images of shape (n, box, box), got {images.shape}")
    n, h, w = images.shape
    if labels is not None and len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} images")
    ncols = max(1, min(n, int(ncols) if ncols else math.ceil(math.sqrt(n))))
    pad = max(1, min(h, w) // 32)
    mont, corners = _montage(images, ncols, pad)
    height, width = mont.shape
    img = _opts(hv.Image(mont, bounds=(0, 0, width, height), kdims=["x (px)", "y (px)"], vdims=["intensity"]),
                cmap="gray", clim=(0.0, 1.0), clipping_colors={"NaN": "white"})
    layers: list[Any] = [img]
    inches = min(14.0, max(6.0, 1.1 * ncols))  # matplotlib figure width
    bk_w = min(1200, max(300, 100 * ncols, 2 * width))  # bokeh width (px)
    if labels is not None:
        texts = [str(s) for s in labels]
        off = max(1.0, 0.04 * min(h, w))
        xs = [c + off for _, c in corners]
        ys = [height - r - off for r, _ in corners]
        # font size (pt) such that the longest label fills at most ~85% of a tile (digit ≈ 0.65 em)
        fit = 0.85 / (0.65 * max(1, max(len(t) for t in texts)) * ncols)
        mpl_size = float(np.clip(fit * 72 * inches * 0.75, 4, 10))  # axes span ~75% of the figure
        bk_size = float(np.clip(fit * 0.75 * bk_w, 5, 11))
        layers.append(_opts(hv.Labels((xs, ys, texts), kdims=["x (px)", "y (px)"], vdims=["label"]),
                            mpl={"color": "#ffd700", "size": mpl_size, "horizontalalignment": "left",
                                 "verticalalignment": "top"},
                            bokeh={"text_color": "#ffd700", "text_font_size": f"{bk_size:.1f}pt",
                                   "text_align": "left", "text_baseline": "top",
                                   "background_fill_color": "black", "background_fill_alpha": 0.45}))
    return _opts(hv.Overlay(layers), title=title, xaxis=None, yaxis=None, xlim=(0, width), ylim=(0, height),
                 mpl={"fig_inches": (inches, inches * height / width), "aspect": width / height},
                 bokeh={"width": bk_w, "height": max(100, round(bk_w * height / width)), "data_aspect": 1})


# --------------------------------------------------------------------------------------------- saving
_HTML_TEMPLATE = ("{% block css_resources %}{{ cf_css | safe }}{% endblock %}"
                  "{% block js_resources %}{{ cf_js | safe }}{% endblock %}")


def _standalone_html(model: Any, *, title: str) -> str:
    """A bokeh page with BokehJS (and the extensions the model uses) inline and no external files.

    ``bokeh.resources.INLINE`` alone still lists the ``__javascript__`` files of every registered model
    class (Panel, imported by HoloViews, registers a relative ``static/extensions/...`` script), so the
    bundle's raw code is kept and its file references dropped.
    """
    from bokeh.core.templates import CSS_RESOURCES, JS_RESOURCES
    from bokeh.embed import file_html
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.resources import INLINE

    bundle = bundle_for_objs_and_resources([model], INLINE)
    js = JS_RESOURCES.render(js_raw=bundle.js_raw, js_files=[], hashes={})
    css = CSS_RESOURCES.render(css_raw=bundle.css_raw, css_files=[])
    return file_html(model, resources=None, title=title, template=_HTML_TEMPLATE,
                     template_variables={"cf_js": js, "cf_css": css})


def save_figure(obj: Any, path_stem: str | os.PathLike[str], *, png: bool = True,
                html: bool = True) -> list[Path]:
    """Write a HoloViews object as ``<stem>.png`` (matplotlib, Agg) and/or ``<stem>.html`` (bokeh).

    The HTML page embeds BokehJS inline (works offline, no CDN).  Each file is written under a temporary
    name in the same folder and renamed into place, so readers never see a partial file.  The folder is
    created if needed.  The current HoloViews backend is left as it was.  Returns the paths written.
    """
    hv = _hv()
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if png:
        import matplotlib.pyplot as plt

        renderer = hv.renderer("matplotlib").instance(dpi=_PNG_DPI)
        with plt.ioff():
            data, _info = renderer(obj, fmt="png")
        path = stem.with_name(stem.name + ".png")
        write_bytes_atomic(path, data)
        written.append(path)
    if html:
        page = _standalone_html(hv.renderer("bokeh").get_plot(obj).state, title=stem.name)
        path = stem.with_name(stem.name + ".html")
        write_bytes_atomic(path, page.encode("utf-8"))
        written.append(path)
    return written
