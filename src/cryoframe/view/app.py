"""The ``cryoframe view`` page (Panel + Bokeh + Datashader), one :class:`CurationApp` per browser session.

Controls carry the CSS class ``cf-NAME`` (``count``, ``where``, ``where-error``, ``scatter``,
``x-field``, ``y-field``, ``hist-fields``, ``clear``, ``save-name``, ``save``, ``export-cs``,
``export-star``, ``message``, ``gallery`` with tiles ``class-N``, ``gmm-field``, ``gmm-k``,
``gmm-fit``, ``gmm-set-I``, ``viewing``).  The count's text is the exact number of selected
particles; ``where`` always shows the selection as a ``--where`` expression.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cryoframe.errors import CryoframeError
from cryoframe.view.render import Binned, PixelGrid, _masked_counts, colour_counts, scatter_image
from cryoframe.view.selection import Selection, ViewData, format_classes, format_range

__all__ = ["CurationApp"]

log = logging.getLogger(__name__)
CLASS_FIELD = "alignments2D/class"
_PREFERRED = ["ctf/df1_A", "alignments3D/error", "alignments2D/class_posterior", "pick_stats/ncc_score",
              "alignments3D/class_posterior", "ctf/df2_A", "alignments2D/error"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _safe(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a page callback; any error becomes one line on the page, never a traceback."""

    @functools.wraps(method)
    def run(self: CurationApp, *a: Any, **k: Any) -> Any:
        try:
            return method(self, *a, **k)
        except CryoframeError as exc:
            self._message(str(exc), error=True)
        except Exception as exc:  # noqa: BLE001 - the page shows one line, the server log the details
            log.exception("cryoframe view: %s failed", method.__name__)
            self._message(f"{type(exc).__name__}: {exc}", error=True)
        return None

    return run


def _default_fields(numeric: list[str]) -> list[str]:
    pref = [f for f in _PREFERRED if f in numeric]
    return pref + [f for f in numeric if f not in pref]


class CurationApp:
    """Linked scatter + histograms + viewing directions + class gallery + GMM + save, over one :class:`ViewData`."""

    SCATTER_W, SCATTER_H = 560, 430
    HIST_W, HIST_H = 380, 170

    def __init__(self, data: ViewData, *, save_dir: str | Path | None = None, hist_fields: list[str] | None = None,
                 x: str | None = None, y: str | None = None) -> None:
        import panel as pn

        self.data = data
        self.sel = Selection(data)
        self.save_dir = Path(save_dir) if save_dir is not None else Path.cwd()
        self.saved: Any = None
        self._syncing = False
        self._generation = 0
        self._draw_lock = threading.Lock()
        if len(data.numeric) < 1:
            raise CryoframeError(f"{data.store.path}: no numeric fields to show")
        fields = _default_fields(data.numeric)
        x = x or fields[0]
        y = y or (fields[1] if len(fields) > 1 else fields[0])
        hist_fields = hist_fields or [f for f in fields if f not in (x, y)][:2] + [x]

        w = pn.widgets
        self.count = pn.pane.HTML(self._count_html(), css_classes=["cf-count"], margin=(8, 4))
        self.where = w.TextInput(value="", placeholder="--where expression (Enter applies), e.g. `ctf/df1_A` < 15000",
                                 css_classes=["cf-where"], sizing_mode="stretch_width")
        self.where_error = pn.pane.HTML("", css_classes=["cf-where-error"], styles={"color": "#b00020"})
        self.clear_btn = w.Button(label="clear selection", css_classes=["cf-clear"], width=130)
        self.x_field = w.Select(label="x", options=data.numeric, value=x, css_classes=["cf-x-field"], width=250)
        self.y_field = w.Select(label="y", options=data.numeric, value=y, css_classes=["cf-y-field"], width=250)
        self.hist_fields = w.MultiChoice(label="histograms", options=data.numeric, value=hist_fields,
                                         css_classes=["cf-hist-fields"], width=520)
        self.save_name = w.TextInput(label="save as", placeholder="name of the new store", css_classes=["cf-save-name"],
                                     width=260)
        self.save_btn = w.Button(label="save", button_type="primary", css_classes=["cf-save"], width=90)
        self.export_cs = w.Button(label="export .cs", css_classes=["cf-export-cs"], width=100)
        self.export_star = w.Button(label="export .star", css_classes=["cf-export-star"], width=100)
        self.message = pn.pane.HTML("", css_classes=["cf-message"], sizing_mode="stretch_width")

        self.where.param.watch(self._on_where, "value")
        self.clear_btn.on_click(self._on_clear)
        self.x_field.param.watch(self._on_fields, "value")
        self.y_field.param.watch(self._on_fields, "value")
        self.hist_fields.param.watch(self._on_hist_fields, "value")
        self.save_btn.on_click(self._on_save)
        self.export_cs.on_click(functools.partial(self._on_export, "cs"))
        self.export_star.on_click(functools.partial(self._on_export, "star"))

        self.scatter_pane = pn.pane.Bokeh(self._scatter_figure(), css_classes=["cf-scatter-pane"])
        self.hists = pn.Column(*self._hist_panes())
        self.gmm = self._gmm_panel()
        right = [self.hists, self.gmm]
        self.viewing = None
        if data.has_poses:
            self.viewing = pn.pane.Bokeh(self._viewing_figure(), css_classes=["cf-viewing"])
            right.insert(1, self.viewing)
            if not data.pose_ready and pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
                self._pose_poll = pn.state.add_periodic_callback(self._on_pose_poll, period=1000)
        top = pn.Row(pn.pane.HTML("<b>selected</b>", margin=(8, 4)), self.count,
                     pn.pane.HTML(f"of {data.n} particles", margin=(8, 4)), self.clear_btn)
        body = [top, self.where, self.where_error,
                pn.Row(pn.Column(pn.Row(self.x_field, self.y_field), self.scatter_pane, self.hist_fields),
                       pn.Column(*right)),
                pn.Row(self.save_name, self.save_btn, self.export_cs, self.export_star), self.message]
        gallery = self._gallery()
        if gallery is not None:
            body.insert(4, gallery)
        self.layout = pn.Column(*body, sizing_mode="stretch_width")
        self.layout.cf_app = self  # for notebooks and tests

    # -- selection -> page ---------------------------------------------------------------------
    def _count_html(self) -> str:
        return f'<span data-testid="count" style="font-size:1.3em;font-weight:bold">{self.sel.count}</span>'

    def _message(self, text: str, error: bool = False) -> None:
        import html

        colour = "#b00020" if error else "#1b5e20"
        self.message.object = f'<span data-testid="message" style="color:{colour}">{html.escape(text)}</span>'

    def _changed(self) -> None:
        """Count and expression first (cheap), the plots on the next tick."""
        self.count.object = self._count_html()
        self._syncing = True
        try:
            self.where.value = self.sel.expression
        finally:
            self._syncing = False
        self.where_error.object = ""
        import panel as pn

        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            # the plots are computed off the event loop so the count goes out at once; the newest wins
            self._generation += 1
            gen = self._generation
            threading.Thread(target=self._compute_plots, args=(doc, gen), daemon=True).start()
        else:
            self._redraw()

    def _compute_plots(self, doc: Any, gen: int) -> None:
        with self._draw_lock:
            if gen != self._generation:
                return
            try:
                out = self._plot_data()
            except Exception:  # noqa: BLE001 - logged; the page keeps the previous plots
                log.exception("cryoframe view: redraw failed")
                return
        if gen == self._generation:
            doc.add_next_tick_callback(functools.partial(self._show_plots, out))

    def _plot_data(self) -> dict[str, Any]:
        xr, yr = self._ranges()
        out: dict[str, Any] = {"scatter": {"image": [self._scatter_rgba(xr, yr)], "x": [xr[0]], "y": [yr[0]],
                                           "dw": [xr[1] - xr[0]], "dh": [yr[1] - yr[0]]},
                               "hists": {f: self._binned(f).counts(self.sel.mask, self.sel.count)
                                         for f in list(self._hist_src)}}
        if self.viewing is not None:
            out["viewing"] = {"image": [self._viewing_rgba()]}
        return out

    @_safe
    def _show_plots(self, out: dict[str, Any]) -> None:
        self.scatter_src.data = out["scatter"]
        for f, counts in out["hists"].items():
            if f in self._hist_src:
                self._hist_src[f].patch({"sel": [(slice(None), counts)]})
        if "viewing" in out:
            self._view_src.data = out["viewing"]

    @_safe
    def _redraw(self) -> None:
        self._show_plots(self._plot_data())

    def _apply(self, key: str, text: str | None) -> None:
        self.sel.set_term(key, text)
        self._changed()

    # -- where box -----------------------------------------------------------------------------
    def _on_where(self, event: Any) -> None:
        if self._syncing:
            return
        import html

        try:
            self.sel.set_expression(event.new or "")
        except CryoframeError as exc:
            self.where_error.object = f'<span data-testid="where-error">{html.escape(str(exc))}</span>'
            return
        except Exception as exc:  # noqa: BLE001
            self.where_error.object = f'<span data-testid="where-error">{html.escape(f"bad expression: {exc}")}</span>'
            return
        self._changed()

    @_safe
    def _on_clear(self, _: Any) -> None:
        self.sel.clear()
        for t in self._tiles.values() if hasattr(self, "_tiles") else ():
            t.value = False
        self._changed()

    # -- scatter -------------------------------------------------------------------------------
    def _ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        def pad(r: tuple[float, float]) -> tuple[float, float]:
            d = (r[1] - r[0]) * 0.02
            return r[0] - d, r[1] + d

        return pad(self.data.extent(self.x_field.value)), pad(self.data.extent(self.y_field.value))

    def _scatter_figure(self) -> Any:
        from bokeh.events import SelectionGeometry
        from bokeh.models import BoxSelectTool, ColumnDataSource, LassoSelectTool, Range1d, ResetTool

        xr, yr = self._ranges()
        box = BoxSelectTool(persistent=False)
        lasso = LassoSelectTool(persistent=False)
        from bokeh.plotting import figure

        fig = figure(width=self.SCATTER_W, height=self.SCATTER_H, tools=[box, lasso, ResetTool()], active_drag=box,
                     x_range=Range1d(*xr), y_range=Range1d(*yr), x_axis_label=self.x_field.value,
                     y_axis_label=self.y_field.value, css_classes=["cf-scatter"], toolbar_location="above")
        self.scatter_src = ColumnDataSource({"image": [self._scatter_rgba(xr, yr)], "x": [xr[0]], "y": [yr[0]],
                                             "dw": [xr[1] - xr[0]], "dh": [yr[1] - yr[0]]})
        fig.image_rgba("image", x="x", y="y", dw="dw", dh="dh", source=self.scatter_src)
        fig.on_event(SelectionGeometry, self._on_scatter_select)
        self.scatter_fig = fig
        return fig

    def _scatter_rgba(self, xr: tuple[float, float], yr: tuple[float, float]) -> np.ndarray:
        xs, ys = self.data.values(self.x_field.value), self.data.values(self.y_field.value)
        grid = self.data.cached(("grid", self.x_field.value, self.y_field.value, xr, yr),
                                lambda: PixelGrid(xs, ys, xr, yr, self.SCATTER_W, self.SCATTER_H))
        return scatter_image(grid, self.sel.mask, self.sel.count)

    @_safe
    def _on_scatter_select(self, event: Any) -> None:
        if not event.final:
            return
        g = event.geometry
        xf, yf = self.x_field.value, self.y_field.value
        if g.get("type") == "rect":
            term = f"{format_range(xf, g['x0'], g['x1'])} and {format_range(yf, g['y0'], g['y1'])}"
        elif g.get("type") == "poly" and len(g.get("x", [])) >= 3:
            from cryoframe.query.polygon import format_inpolygon

            term = format_inpolygon(xf, yf, list(zip(g["x"], g["y"], strict=True)))
        else:
            return
        self._apply("scatter", term)

    @_safe
    def _on_fields(self, _: Any) -> None:
        self.scatter_pane.object = self._scatter_figure()

    # -- histograms ----------------------------------------------------------------------------
    def _binned(self, field: str) -> Binned:
        return self.data.cached(("bins", field), lambda: Binned(self.data.values(field), *self.data.extent(field)))

    def _hist_panes(self) -> list[Any]:
        import panel as pn

        self._hist_src: dict[str, Any] = {}
        self._gmm_src: dict[str, Any] = {}
        return [pn.pane.Bokeh(self._hist_figure(f), css_classes=[f"cf-hist-{i}"])
                for i, f in enumerate(self.hist_fields.value)]

    def _hist_figure(self, field: str) -> Any:
        from bokeh.events import SelectionGeometry
        from bokeh.models import BoxSelectTool, ColumnDataSource, ResetTool
        from bokeh.plotting import figure

        b = self._binned(field)
        box = BoxSelectTool(dimensions="width", persistent=False)
        fig = figure(width=self.HIST_W, height=self.HIST_H, tools=[box, ResetTool()], active_drag=box,
                     x_axis_label=field, toolbar_location="right", css_classes=["cf-hist"])
        fig.yaxis.visible = False
        src = ColumnDataSource({"l": b.edges[:-1], "r": b.edges[1:], "all": b.all, "sel": b.counts(self.sel.mask)})
        fig.quad(left="l", right="r", bottom=0, top="all", source=src, color="#cccccc", line_color=None)
        fig.quad(left="l", right="r", bottom=0, top="sel", source=src, color="#2171b5", line_color=None, alpha=0.85)
        gsrc = ColumnDataSource({"xs": [], "ys": []})
        fig.multi_line("xs", "ys", source=gsrc, color="#d95f02", line_width=2)
        self._hist_src[field], self._gmm_src[field] = src, gsrc
        fig.on_event(SelectionGeometry, functools.partial(self._on_hist_select, field))
        return fig

    @_safe
    def _on_hist_select(self, field: str, event: Any) -> None:
        if event.final and event.geometry.get("type") == "rect":
            self._apply(f"hist:{field}", format_range(field, event.geometry["x0"], event.geometry["x1"]))

    @_safe
    def _on_hist_fields(self, _: Any) -> None:
        self.hists.objects = self._hist_panes()

    # -- viewing directions --------------------------------------------------------------------
    def _viewing_figure(self) -> Any:
        from bokeh.models import ColumnDataSource
        from bokeh.plotting import figure

        fig = figure(width=self.HIST_W, height=210, x_range=(-180, 180), y_range=(-90, 90), tools="",
                     toolbar_location=None, x_axis_label="azimuth (°)", y_axis_label="elevation (°)",
                     title="viewing directions of the selection")
        self._view_src = ColumnDataSource({"image": [self._viewing_rgba()]})
        fig.image_rgba("image", x=-180, y=-90, dw=360, dh=180, source=self._view_src)
        return fig

    def _viewing_rgba(self) -> np.ndarray:
        if not self.data.pose_ready:  # still being computed in the background: blank until the next redraw
            self.data.start_pose_bins()
            return np.zeros((36, 72), dtype=np.uint32)
        total = self.data.cached(("pose_all",), lambda: _masked_counts(self.data.pose_bins(), 72 * 36 + 1, None,
                                                                       None, None))
        counts = _masked_counts(self.data.pose_bins(), 72 * 36 + 1, self.sel.mask, self.sel.count,
                                total)[: 72 * 36].reshape(36, 72)
        return colour_counts(counts)

    @_safe
    def _on_pose_poll(self) -> None:
        """Draw the viewing directions once their background computation is done."""
        if self.data.pose_ready:
            self._pose_poll.stop()
            self._view_src.data = {"image": [self._viewing_rgba()]}

    # -- GMM ------------------------------------------------------------------------------------
    def _gmm_panel(self) -> Any:
        import panel as pn

        w = pn.widgets
        self.gmm_field = w.Select(label="GMM on", options=self.data.numeric, value=self.hist_fields.value[0],
                                  css_classes=["cf-gmm-field"], width=220)
        self.gmm_k = w.IntInput(label="components", value=2, start=1, end=8, css_classes=["cf-gmm-k"], width=90)
        self.gmm_fit = w.Button(label="fit GMM on selection", css_classes=["cf-gmm-fit"], width=170)
        self.gmm_sets = pn.Row()
        self.gmm_fit.on_click(self._on_gmm_fit)
        return pn.Column(pn.Row(self.gmm_field, self.gmm_k, self.gmm_fit), self.gmm_sets)

    @_safe
    def _on_gmm_fit(self, _: Any) -> None:
        import panel as pn

        from cryoframe.algorithms import GaussianMixture

        field, k = self.gmm_field.value, int(self.gmm_k.value)
        v = self.data.values(field)
        v = v[self.sel.mask] if self.sel.count != self.data.n else v
        v = v[np.isfinite(v)].astype(np.float64)
        if v.size < 2 * k:
            raise CryoframeError(f"too few selected particles with a finite {field} to fit {k} components")
        gm = GaussianMixture(n_components=k, random_state=0).fit(v.reshape(-1, 1))
        order = np.argsort(gm.means_.ravel())
        grid = np.linspace(v.min(), v.max(), 4001)
        lab = np.asarray(gm.predict(grid.reshape(-1, 1)))
        mu, sd, wt = gm.means_.ravel(), np.sqrt(gm.covariances_.ravel()), gm.weights_.ravel()
        if field not in self.hist_fields.value:
            self.hist_fields.value = [*self.hist_fields.value, field]
        b = self._binned(field)
        width = b.edges[1] - b.edges[0]
        xs = np.linspace(b.edges[0], b.edges[-1], 400)
        curves = [wt[c] * v.size * width * np.exp(-0.5 * ((xs - mu[c]) / sd[c]) ** 2) / (sd[c] * np.sqrt(2 * np.pi))
                  for c in order]
        self._gmm_src[field].data = {"xs": [xs] * len(curves), "ys": curves}
        buttons = []
        for i, c in enumerate(order):
            where = np.flatnonzero(lab == c)
            if not where.size:
                continue
            lo = v.min() if where[0] == 0 else (grid[where[0] - 1] + grid[where[0]]) / 2
            hi = v.max() if where[-1] == grid.size - 1 else (grid[where[-1]] + grid[where[-1] + 1]) / 2
            btn = pn.widgets.Button(label=f"set {i}: {mu[c]:.4g} ± {sd[c]:.3g}", css_classes=[f"cf-gmm-set-{i}"],
                                    width=170)
            btn.on_click(functools.partial(self._on_gmm_set, format_range(field, lo, hi)))
            buttons.append(btn)
        self.gmm_sets.objects = buttons

    @_safe
    def _on_gmm_set(self, term: str, _: Any) -> None:
        self._apply("gmm", term)

    # -- class gallery -------------------------------------------------------------------------
    def _gallery(self) -> Any:
        import panel as pn

        d = self.data.store.extras_dir()
        if CLASS_FIELD not in self.data.fields or not (d / "model.json").exists() \
                or not (d / "class_averages.zarr").exists():
            return None
        import zarr

        from cryoframe.jobs.class2d import class_scores

        model = json.loads((d / "model.json").read_text())
        avgs = zarr.open_array(str(d / "class_averages.zarr"), mode="r")
        sizes = {int(c["class"]): int(c["count"]) for c in model["classes"]}
        stored = class_scores(model)
        scores = stored if stored is not None else [float("nan")] * int(model["n_classes"])  # older class2d runs
        order = sorted(range(model["n_classes"]), key=lambda c: (-sizes.get(c, 0), c))[:200]
        self._tiles: dict[int, Any] = {}
        tiles = []
        for c in order:
            tog = pn.widgets.Toggle(label=f"#{c} · {sizes.get(c, 0)} · {scores[c]:.2f}", css_classes=[f"cf-class-{c}"],
                                    width=112, margin=(0, 2))
            tog.param.watch(self._on_tile, "value")
            self._tiles[c] = tog
            tiles.append(pn.Column(pn.pane.PNG(_png(np.asarray(avgs[c])), width=96, height=96, margin=(2, 10)), tog,
                                   margin=2, styles={"border": "1px solid #ddd"}))
        return pn.Column(pn.pane.HTML("<b>2D classes</b> (by size; #class · particles · score); click to select"),
                         pn.FlexBox(*tiles, css_classes=["cf-gallery"]), sizing_mode="stretch_width")

    @_safe
    def _on_tile(self, _: Any) -> None:
        chosen = [c for c, t in self._tiles.items() if t.value]
        self._apply("classes", format_classes(CLASS_FIELD, chosen) if chosen else None)

    # -- save / export ---------------------------------------------------------------------------
    def _target(self) -> Path:
        name = (self.save_name.value or "").strip()
        if not name:
            raise CryoframeError("type a name for the new store first")
        if not _NAME.match(name):
            raise CryoframeError(f"store name {name!r}: use letters, digits, '.', '_' and '-' only")
        return self.save_dir / (name if name.endswith(".cf") else f"{name}.cf")

    @_safe
    def _on_save(self, _: Any) -> None:
        from cryoframe.query.join import write_query

        out = self._target()
        if self.sel.count == 0:
            raise CryoframeError("the selection is empty: nothing to save")
        if out.exists():
            raise CryoframeError(f"{out} exists: choose another name")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        where = self.sel.expression or None
        s = write_query(self.data.store, out, where, join=self.data.join)  # == cryoframe query --where --out
        self.saved = s
        self._message(f"saved {s.n} particles -> {s.path}")

    @_safe
    def _on_export(self, fmt: str, _: Any) -> None:
        from cryoframe.storage.exporters import export

        if self.saved is None:
            raise CryoframeError("save the selection first; the export is written next to the saved store")
        out = Path(self.saved.path).with_suffix(f".{fmt}")
        if out.exists():
            raise CryoframeError(f"{out} exists")
        p = export(self.saved, out, format=fmt)
        self._message(f"exported {self.saved.n} particles -> {p}")


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    a = img.astype(np.float64)
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0, 1)
    a = np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    im = Image.fromarray((a * 255).astype(np.uint8)[::-1]).resize((96, 96), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
