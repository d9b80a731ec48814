"""Images and counts for the view's plots, from numpy masks (no table, no per-redraw sorting).

* scatter: Datashader ``Canvas.points`` aggregates of all particles (cached per field pair) and of
  the selection, shaded and stacked into one RGBA image for a Bokeh ``image_rgba`` glyph;
* histograms: each field's bin index is computed once (uint8), so a redraw is one
  ``np.bincount`` over the selected indices;
* viewing directions: (azimuth, elevation) bin of each particle's pose, computed in batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Binned", "colour_counts", "scatter_image"]

ALL_CMAP = ["#e6e6e6", "#6b6b6b"]
SEL_CMAP = ["#9ecae1", "#08306b"]


class Binned:
    """Fixed bins over a field's range; ``counts(mask)`` is exact and O(selected)."""

    def __init__(self, values: np.ndarray, lo: float, hi: float, bins: int = 80) -> None:
        if bins > 254:
            raise ValueError("at most 254 bins")
        self.bins = bins
        self.edges = np.linspace(lo, hi, bins + 1)
        scale = bins / (hi - lo)
        idx = np.floor((values.astype(np.float64, copy=False) - lo) * scale)
        idx = np.where(np.isfinite(idx), np.clip(idx, 0, bins - 1), 255)
        self.index = idx.astype(np.uint8)
        self.all = self.counts(None)

    def counts(self, mask: np.ndarray | None) -> np.ndarray:
        idx = self.index if mask is None or mask.all() else self.index[mask]
        return np.bincount(idx, minlength=256)[: self.bins]


def scatter_image(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None, xr: tuple[float, float],
                  yr: tuple[float, float], width: int, height: int, cache: dict[str, Any]) -> np.ndarray:
    """(height, width) uint32 RGBA: all particles in grey, the selection in blue (eq_hist shading).

    ``cache`` keeps the all-particles aggregate between calls with the same arrays and ranges.
    """
    import datashader as ds
    import datashader.transfer_functions as tf
    import pandas as pd

    cvs = ds.Canvas(plot_width=width, plot_height=height, x_range=xr, y_range=yr)
    key = (id(x), id(y), xr, yr, width, height)
    if cache.get("key") != key:
        cache["key"] = key
        cache["agg"] = cvs.points(pd.DataFrame({"x": x, "y": y}, copy=False), "x", "y")
    agg_all = cache["agg"]
    if mask is None or mask.all():
        img = tf.shade(agg_all, cmap=SEL_CMAP, how="eq_hist")
    elif not mask.any():
        img = tf.shade(agg_all, cmap=ALL_CMAP, how="eq_hist")
    else:
        agg_sel = cvs.points(pd.DataFrame({"x": x[mask], "y": y[mask]}, copy=False), "x", "y")
        img = tf.stack(tf.shade(agg_all, cmap=ALL_CMAP, how="eq_hist"), tf.shade(agg_sel, cmap=SEL_CMAP, how="eq_hist"))
    return np.ascontiguousarray(img.data)


def colour_counts(counts: np.ndarray) -> np.ndarray:
    """uint32 RGBA of a 2-D count grid (log colour, empty cells transparent)."""
    from matplotlib import colormaps

    c = np.log1p(counts.astype(np.float64))
    top = c.max()
    rgba = colormaps["viridis"](c / top if top > 0 else c, bytes=True)
    rgba[..., 3] = np.where(counts > 0, 255, 0)
    return np.ascontiguousarray(rgba).view(np.uint32)[..., 0]


def pose_bins(batches: Any, n_az: int = 72, n_el: int = 36) -> np.ndarray:
    """uint16 bin (elevation × ``n_az`` + azimuth) of each particle's viewing direction from batches of
    cryoSPARC rotation vectors (n, 3); non-finite poses get ``n_az * n_el`` (not counted)."""
    from cryoframe.plot import viewing_directions_from_rotvec

    out = []
    for pose in batches:
        az, el = viewing_directions_from_rotvec(np.asarray(pose, dtype=np.float64).reshape(-1, 3))
        ia = np.clip(np.floor((az + 180.0) / 360.0 * n_az), 0, n_az - 1)
        ie = np.clip(np.floor((el + 90.0) / 180.0 * n_el), 0, n_el - 1)
        b = ie * n_az + ia
        out.append(np.where(np.isfinite(b), b, n_az * n_el).astype(np.uint16))
    return np.concatenate(out) if out else np.zeros(0, np.uint16)
