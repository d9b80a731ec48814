"""Images and counts for the view's plots, from numpy masks (no table, no per-redraw sorting).

* scatter: each point's pixel is computed once per field pair (:class:`PixelGrid`), the selection's
  aggregate is one ``np.bincount`` (of the unselected points above half), shaded with Datashader
  (eq_hist) and stacked over all particles into one RGBA image for a Bokeh ``image_rgba`` glyph;
* histograms: each field's bin index is computed once (uint8), so a redraw is one
  ``np.bincount`` over the selected indices;
* viewing directions: (azimuth, elevation) bin of each particle's pose, computed in batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Binned", "PixelGrid", "colour_counts", "scatter_image"]

ALL_CMAP = ["#e6e6e6", "#6b6b6b"]
SEL_CMAP = ["#9ecae1", "#08306b"]


class Binned:
    """Fixed bins over a field's range; ``counts(mask)`` is exact and O(selected)."""

    def __init__(self, values: np.ndarray, lo: float, hi: float, bins: int = 80) -> None:
        if bins > 254:
            raise ValueError("at most 254 bins")
        self.bins = bins
        self.edges = np.linspace(lo, hi, bins + 1)
        self.index = _cell(values, lo, bins / (hi - lo), bins, 255, np.uint8)
        self.all = self.counts(None)

    def counts(self, mask: np.ndarray | None, selected: int | None = None) -> np.ndarray:
        return _masked_counts(self.index, 256, mask, selected, getattr(self, "all", None))[: self.bins]


_CHUNK = 1 << 22
"""Rows per block of the per-point passes: full-length float32/int64 temporaries would add ~1.2 GB
per plotted field at 1e8 particles (the server's memory goal there is 4 GB)."""


def _cell(v: np.ndarray, lo: float, scale: float, n: int, missing: int,
          dtype: type[np.integer] = np.int32) -> np.ndarray:
    """Cell ``floor((v - lo) * scale)`` clipped to 0..n-1 (the top edge in the last cell), ``missing``
    for NaN, as ``dtype``; computed in float32 (the cells are for drawing, not for selecting), in
    blocks of ``_CHUNK`` rows."""
    out = np.empty(v.shape[0], dtype=dtype)
    for a in range(0, v.shape[0], _CHUNK):
        t = v[a : a + _CHUNK].astype(np.float32, copy=True)
        t -= np.float32(lo)
        t *= np.float32(scale)
        nan = np.isnan(t)
        np.clip(t, 0, n - 1, out=t)
        has_nan = bool(nan.any())
        if has_nan:
            t[nan] = 0  # (no NaN -> integer cast)
        o = out[a : a + _CHUNK]
        o[...] = t
        if has_nan:
            o[nan] = missing
    return out


def _bincount(index: np.ndarray, size: int, mask: np.ndarray | None = None) -> np.ndarray:
    """``np.bincount(index[mask], minlength=size)`` in blocks (bincount converts its input to int64)."""
    out = np.zeros(size, dtype=np.int64)
    for a in range(0, index.shape[0], _CHUNK):
        part = index[a : a + _CHUNK] if mask is None else index[a : a + _CHUNK][mask[a : a + _CHUNK]]
        out += np.bincount(part, minlength=size)[:size]
    return out


def _masked_counts(index: np.ndarray, size: int, mask: np.ndarray | None, selected: int | None,
                   total: np.ndarray | None) -> np.ndarray:
    """``bincount(index[mask])``; above half selected, ``total - bincount(index[~mask])`` (half the work)."""
    if mask is None:
        return _bincount(index, size)
    n_sel = int(np.count_nonzero(mask)) if selected is None else selected
    if total is not None and n_sel == index.size:
        return total
    if total is not None and n_sel > index.size // 2:
        return total - _bincount(index, size, ~mask)[: total.size]
    return _bincount(index, size, mask)


class PixelGrid:
    """Pixel of each point on a ``width`` × ``height`` canvas over ``xr`` × ``yr`` (Datashader's
    ``Canvas.points`` binning), so a selection's image is one gather + ``np.bincount``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, xr: tuple[float, float], yr: tuple[float, float],
                 width: int, height: int) -> None:
        self.xr, self.yr, self.width, self.height = xr, yr, width, height
        off = width * height
        self.index = np.empty(x.shape[0], dtype=np.int32)
        for a in range(0, x.shape[0], _CHUNK):  # blockwise: no full-length x-cell temporary
            ix = _cell(x[a : a + _CHUNK], xr[0], width / (xr[1] - xr[0]), width, off)
            iy = _cell(y[a : a + _CHUNK], yr[0], height / (yr[1] - yr[0]), height, off)
            iy *= width
            iy += ix
            np.minimum(iy, off, out=self.index[a : a + _CHUNK])  # a missing x or y: the overflow cell
        self.size = width * height + 1
        self.all = _bincount(self.index, self.size)[: width * height]

    def agg(self, counts: np.ndarray) -> Any:
        import xarray as xr

        w, h = self.width, self.height
        xs = self.xr[0] + (np.arange(w) + 0.5) * (self.xr[1] - self.xr[0]) / w
        ys = self.yr[0] + (np.arange(h) + 0.5) * (self.yr[1] - self.yr[0]) / h
        # uint32 like Canvas.points: Datashader leaves zero counts transparent
        return xr.DataArray(counts[: w * h].reshape(h, w).astype(np.uint32), coords=[("y", ys), ("x", xs)])

    def counts(self, mask: np.ndarray | None, selected: int | None = None) -> np.ndarray:
        return _masked_counts(self.index, self.size, mask, selected, self.all)[: self.width * self.height]


def scatter_image(g: PixelGrid, mask: np.ndarray | None, selected: int | None = None) -> np.ndarray:
    """(height, width) uint32 RGBA: all particles in grey, the selection in blue (Datashader eq_hist shading)."""
    import datashader.transfer_functions as tf

    n = g.index.size
    n_sel = None if mask is None else (int(np.count_nonzero(mask)) if selected is None else selected)
    if mask is None or n_sel == n:
        img = tf.shade(g.agg(g.all), cmap=SEL_CMAP, how="eq_hist")
    elif n_sel == 0:
        img = tf.shade(g.agg(g.all), cmap=ALL_CMAP, how="eq_hist")
    else:
        img = tf.stack(tf.shade(g.agg(g.all), cmap=ALL_CMAP, how="eq_hist"),
                       tf.shade(g.agg(g.counts(mask, n_sel)), cmap=SEL_CMAP, how="eq_hist"))
    return np.ascontiguousarray(img.data)


def colour_counts(counts: np.ndarray) -> np.ndarray:
    """uint32 RGBA of a 2-D count grid (log colour, empty cells transparent)."""
    from matplotlib import colormaps

    c = np.log1p(counts.astype(np.float64))
    top = c.max()
    rgba = colormaps["viridis"](c / top if top > 0 else c, bytes=True)
    rgba[..., 3] = np.where(counts > 0, 255, 0)
    return np.ascontiguousarray(rgba).view(np.uint32)[..., 0]


def pose_bins(batches: Any, n_az: int = 72, n_el: int = 36, n: int | None = None) -> np.ndarray:
    """uint16 bin (elevation × ``n_az`` + azimuth) of each particle's viewing direction from batches of
    cryoSPARC rotation vectors (n, 3); non-finite poses get ``n_az * n_el`` (not counted).  With ``n``
    (the total) the bins are written into one preallocated array (no list + concatenate copy)."""
    from cryoframe.plot import viewing_directions_from_rotvec

    out: list[np.ndarray] = []
    full = None if n is None else np.empty(n, np.uint16)
    pos = 0
    for pose in batches:
        az, el = viewing_directions_from_rotvec(np.asarray(pose, dtype=np.float64).reshape(-1, 3))
        ia = np.clip(np.floor((az + 180.0) / 360.0 * n_az), 0, n_az - 1)
        ie = np.clip(np.floor((el + 90.0) / 180.0 * n_el), 0, n_el - 1)
        b = ie * n_az + ia
        b = np.where(np.isfinite(b), b, n_az * n_el).astype(np.uint16)
        if full is None:
            out.append(b)
        else:
            full[pos : pos + len(b)] = b
        pos += len(b)
    if full is not None:
        if pos != n:
            raise ValueError(f"pose_bins: {pos} poses for {n} particles")
        return full
    return np.concatenate(out) if out else np.zeros(0, np.uint16)
