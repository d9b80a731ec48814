"""The view's selection model and the inpolygon predicate, without a browser: exact agreement with
``cryoframe query`` (Arrow and pandas evaluators), refusals, port and store errors."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from cryoframe import api
from cryoframe.errors import InputError
from cryoframe.query.expr import query_frame
from cryoframe.query.polygon import format_inpolygon, inpolygon
from cryoframe.storage.store import ParticleStore
from cryoframe.view import Selection, ViewData, format_classes, format_range

X, Y = "ctf/df1_A", "alignments3D/error"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return api.synth(tmp_path_factory.mktemp("view") / "m.cf", n=3000, classes=4, metadata_only=True, seed=3)


def _poly(store: ParticleStore) -> list[list[float]]:
    t = store.table([X, Y])
    x, y = t.column(0).to_numpy(), t.column(1).to_numpy()
    (x0, x5, x9), (y0, y5, y9) = np.percentile(x, [5, 50, 95]), np.percentile(y, [5, 50, 95])
    return [[x0, y0], [x9, y5], [x5, y9], [x5, y5]]  # concave: the last vertex dents it


def test_inpolygon_even_odd_against_matplotlib():
    from matplotlib.path import Path

    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 2, size=(20000, 2)).astype(np.float32)
    poly = [[0, 0], [1, 0], [1, 1], [0.5, 0.2], [0, 1]]
    ours = inpolygon(pts[:, 0], pts[:, 1], poly)
    ref = Path(poly).contains_points(pts.astype(np.float64))
    assert 0 < ours.sum() < len(pts)
    assert (ours != ref).sum() <= 2  # matplotlib's edge handling differs only for points on edges
    assert not inpolygon(np.array([np.nan]), np.array([0.5]), poly)[0]
    with pytest.raises(ValueError, match="at least 3"):
        inpolygon(pts[:, 0], pts[:, 1], [[0, 0], [1, 1]])


def test_inpolygon_arrow_and_pandas_paths_agree(store):
    poly = _poly(store)
    where = format_inpolygon(X, Y, poly) + " and `alignments2D/class` in [0, 2]"
    arrow_n = len(api.query(store, where, columns=["uid"]))  # Arrow kernels (registered function)
    pandas_n = len(query_frame(store, where, ["uid"]).compute())  # pandas fallback (local function)
    t = store.table([X, Y, "alignments2D/class"])
    ref = inpolygon(t.column(0).to_numpy(), t.column(1).to_numpy(), poly) & np.isin(t.column(2).to_numpy(), [0, 2])
    assert arrow_n == pandas_n == int(ref.sum()) > 0


@pytest.mark.parametrize("where", [
    "`ctf/df1_A` < 15000",
    "12000.5 <= `ctf/df1_A` <= 19000.25 and `alignments3D/error` > 9500",
    "`alignments2D/class` in [1, 3] or not (`pick_stats/ncc_score` < 0.4)",
    "abs(`alignments2D/pose`) < 1 and `uid` > 9223372036854775808",
    "`ctf/df1_A` + `ctf/df2_A` > 30000",
])
def test_selection_count_equals_query(store, where):
    data = ViewData(store)
    assert int(data.evaluate(where).sum()) == len(api.query(store, where, columns=["uid"]))


def test_range_fast_path_equals_query_at_float32_boundaries(store):
    data = ViewData(store)
    x = store.table([X]).column(0).to_numpy()
    lo, hi = float(np.sort(x)[100]), float(np.sort(x)[2000])  # bounds equal to stored float32 values
    for where in [format_range(X, lo, hi),  # inclusive at both ends
                  format_range(X, np.nextafter(lo, np.inf), np.nextafter(hi, -np.inf)),  # just inside (float64)
                  f"({format_range(X, 12000.123456789, 19000.987654321)}) and ({format_range(Y, 9500.0001, 10500.77)})"]:
        assert data._ranges_fast(where) is not None
        assert int(data.evaluate(where).sum()) == len(api.query(store, where, columns=["uid"])) > 0
    assert int(data.evaluate(format_range(X, lo, hi)).sum()) == 1901
    for c in map(float, (lo, np.nextafter(lo, np.inf), np.nextafter(lo, -np.inf), 15000.3)):
        for where in [f"`{X}` < {c!r}", f"`{X}` <= {c!r}", f"{c!r} < `{X}`", f"`{X}` >= {c!r} and `{Y}` > 9800.5",
                      f"{c!r} < `{X}` <= {hi!r}"]:
            assert data._ranges_fast(where) is not None
            assert int(data.evaluate(where).sum()) == len(api.query(store, where, columns=["uid"])), where
    assert data._ranges_fast("(1 <= `ctf/df1_A` <= 2") is None  # unbalanced: left to the parser's error


def test_terms_combine_exactly_and_bad_input_keeps_selection(store):
    data = ViewData(store)
    sel = Selection(data)
    sel.set_term("scatter", f"{format_range(X, 12000, 18000)} and {format_range(Y, 9000, 10000)}")
    sel.set_term("classes", format_classes("alignments2D/class", [2, 0, 2]))
    assert sel.terms["classes"] == "`alignments2D/class` in [0, 2]"
    assert sel.count == len(api.query(store, sel.expression, columns=["uid"])) > 0
    before = (sel.expression, sel.count)
    with pytest.raises(InputError, match="bad expression"):
        sel.set_expression("`ctf/df1_A` < ")
    with pytest.raises(InputError, match="unknown field.*nope"):
        sel.set_expression("`nope` > 3")
    assert (sel.expression, sel.count) == before
    sel.set_term("classes", None)
    sel.clear()
    assert sel.count == store.n and sel.expression == ""


def test_save_matches_query_and_refusals(store, tmp_path):
    pytest.importorskip("panel")
    from cryoframe.view.app import CurationApp

    app = CurationApp(ViewData(store), save_dir=tmp_path)
    app.where.value = "`ctf/df1_A` < 15000"
    app.save_name.value = "low"
    app._on_save(None)
    saved = ParticleStore(tmp_path / "low.cf")
    ref = api.query(store, "`ctf/df1_A` < 15000", out=tmp_path / "ref.cf")
    assert np.array_equal(saved.table(["uid"]).column(0).to_numpy(), ref.table(["uid"]).column(0).to_numpy())
    assert saved.lineage[-1]["params"]["where"] == "`ctf/df1_A` < 15000"
    app._on_save(None)  # same name again
    assert "exists" in app.message.object
    app.where.value = "`ctf/df1_A` < 0"
    assert app.sel.count == 0
    app.save_name.value = "empty"
    app._on_save(None)
    assert "empty" in app.message.object and not (tmp_path / "empty.cf").exists()
    app.where.value = "`ctf/df1_A` <"  # malformed: error next to the box, selection kept
    assert "bad expression" in app.where_error.object and app.sel.count == 0
    app._on_export("star", None)
    assert (tmp_path / "low.star").exists() and "exported" in app.message.object


def test_port_in_use_and_not_a_store(tmp_path):
    from cryoframe.view.server import check_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port}"):
            check_port("127.0.0.1", port)
        r = subprocess.run([sys.executable, "-m", "cryoframe", "view", str(tmp_path), "--no-browser"],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tmp_path) in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_scatter_pixels_match_datashader_and_selection_counts_are_exact():
    import datashader as ds
    import pandas as pd

    from cryoframe.view.render import Binned, PixelGrid, scatter_image

    rng = np.random.default_rng(5)
    x = rng.normal(size=50000).astype(np.float32)
    y = rng.normal(size=50000).astype(np.float32)
    x[:10] = np.nan
    xr_, yr_ = (-4.5, 4.5), (-4.0, 4.0)
    g = PixelGrid(x, y, xr_, yr_, 120, 90)
    ref = ds.Canvas(plot_width=120, plot_height=90, x_range=xr_, y_range=yr_).points(
        pd.DataFrame({"x": x, "y": y}), "x", "y").values
    assert np.abs(g.all.reshape(90, 120) - ref).sum() <= 0.001 * len(x)  # float rounding at pixel edges only
    for frac in (0.1, 0.9):  # below and above half selected (the complement path)
        mask = rng.random(len(x)) < frac
        assert np.array_equal(g.counts(mask), np.bincount(g.index[mask], minlength=g.size)[: 120 * 90])
        b = Binned(x, -4.5, 4.5, bins=40)
        assert np.array_equal(b.counts(mask), np.bincount(b.index[mask], minlength=256)[:40])
        assert b.counts(mask).sum() == np.count_nonzero(mask & np.isfinite(x))  # NaN not counted
    img = scatter_image(g, mask)  # empty pixels stay transparent, the others are drawn
    alpha = (img >> 24).ravel()
    empty = g.all == 0
    assert empty.any() and (alpha[empty] == 0).all() and (alpha[~empty] > 0).all()


def test_joined_stores_count_and_save_like_query_join(store, tmp_path):
    pytest.importorskip("panel")
    from cryoframe.view.app import CurationApp

    part = api.query(store, "`alignments2D/class` in [0, 1]", columns=["alignments3D/error"], out=tmp_path / "p.cf")
    data = ViewData(store, [part])
    assert data.n == part.n
    joined = [f for f in data.fields if f.startswith("alignments3D/error@")]
    assert len(joined) == 2
    where = f"`{joined[1]}` > 9600 and `ctf/df1_A` < 18000"
    assert int(data.evaluate(where).sum()) == len(api.query(store, where, join=[part]))
    app = CurationApp(data, save_dir=tmp_path)
    app.where.value = where
    app.save_name.value = "j"
    app._on_save(None)
    ref = api.query(store, where, join=[part], out=tmp_path / "ref.cf")
    assert np.array_equal(ParticleStore(tmp_path / "j.cf").table(["uid"]).column(0).to_numpy(),
                          ref.table(["uid"]).column(0).to_numpy())


def test_lasso_histogram_range_and_gmm_set_select_what_query_selects(store, tmp_path):
    pytest.importorskip("panel")
    from types import SimpleNamespace

    from cryoframe.view.app import CurationApp

    app = CurationApp(ViewData(store), save_dir=tmp_path, x=X, y=Y)
    poly = _poly(store)
    app._on_scatter_select(SimpleNamespace(final=True, geometry={"type": "poly", "x": [p[0] for p in poly],
                                                                 "y": [p[1] for p in poly]}))
    assert app.where.value.startswith("inpolygon(`ctf/df1_A`, `alignments3D/error`, [[")
    assert app.sel.count == len(api.query(store, app.where.value, columns=["uid"])) > 0
    app._on_hist_select("pick_stats/ncc_score", SimpleNamespace(final=True, geometry={"type": "rect", "x0": 0.3,
                                                                                     "x1": 0.6}))
    assert "0.3 <= `pick_stats/ncc_score` <= 0.6" in app.where.value
    assert app.sel.count == len(api.query(store, app.where.value, columns=["uid"])) > 0
    app._on_clear(None)
    app.gmm_field.value, app.gmm_k.value = "pick_stats/ncc_score", 2
    app._on_gmm_fit(None)
    assert len(app.gmm_sets.objects) == 2 and app.message.object == ""
    app.gmm_sets.objects[1].clicks += 1  # pick the high set
    lo, hi = (float(v) for v in re.fullmatch(r"(\S+) <= `pick_stats/ncc_score` <= (\S+)", app.where.value).groups())
    score = store.table(["pick_stats/ncc_score"]).column(0).to_numpy()
    assert np.percentile(score, 10) < lo < np.median(score) and hi == pytest.approx(score.max(), rel=1e-6)  # upper mode
    assert 0 < app.sel.count < store.n
    assert app.sel.count == len(api.query(store, app.where.value, columns=["uid"]))


def test_columns_load_into_one_buffer_equal_to_the_table_and_masks_of_old_terms_are_dropped(store, tmp_path):
    data = ViewData(store)
    for f in (X, "alignments3D/class", "uid"):
        col = data.column(f)
        ref = store.table([f]).column(0).to_numpy()
        assert col.type == store.schema.field(f).type and np.array_equal(col.to_numpy(), ref)
    # a view store (selection of its parent) reads the same way
    sub = api.query(store, "`alignments3D/class` == 1", out=tmp_path / "v.cf")
    vd = ViewData(sub)
    assert np.array_equal(vd.column(X).to_numpy(), sub.table([X]).column(0).to_numpy())
    sel = Selection(data)
    for q in (11000.0, 12000.0, 13000.0):
        sel.set_term("typed", f"`{X}` < {q}")
    sel.set_term("box", format_range(Y, 9000, 10500))
    assert set(sel._cache) == {f"`{X}` < 13000.0", format_range(Y, 9000, 10500)}  # only the terms in use
    assert sel.count == len(query_frame(store, f"(`{X}` < 13000.0) and ({format_range(Y, 9000, 10500)})"))
