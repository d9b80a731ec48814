"""View stores (subset / query --out / select2d outputs): a selection of the parent + added columns.

Every verb that takes a store is run on a view AND on its materialized (plain) copy and must give
the same answer, which is also computed directly from the parent's rows.  Bad input: parent moved or
changed, materialize onto an existing path, selection files that do not fit the parent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cryoframe import api
from cryoframe.errors import InputError, StoreError
from cryoframe.storage.store import ParticleStore
from cryoframe.storage.view import write_view

WHERE = "`pick_stats/ncc_score` > 0.3"


@pytest.fixture(scope="module")
def root(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("views")
    return api.synth(d / "root.cf", n=300, box=16, classes=3, snr=1.0, seed=5, kind="2d")


@pytest.fixture(scope="module")
def expected(root):  # noqa: ANN001, ANN201
    t = root.table()
    keep = t.column("pick_stats/ncc_score").to_numpy() > 0.3
    assert 0 < keep.sum() < root.n
    return t.filter(pa.array(keep)), np.flatnonzero(keep)


@pytest.fixture(scope="module", params=["view", "plain"])
def store(request, root, tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp(request.param)
    v = api.query(root, WHERE, out=d / "v.cf")
    assert v.view is not None and not (v.path / "metadata").exists()
    return v if request.param == "view" else api.materialize(v, d / "plain.cf")


def test_rows_and_images_match_the_parent(store, root, expected) -> None:  # noqa: ANN001
    t, rows = expected
    got = store.table()
    assert got.column_names == t.column_names
    assert got.equals(t.replace_schema_metadata(got.schema.metadata))
    np.testing.assert_array_equal(store.image_rows(), rows)
    np.testing.assert_array_equal(store.read_images(0, store.n), root.read_images(0, root.n)[rows])
    np.testing.assert_array_equal(store.images().compute(), root.read_images(0, root.n)[rows])
    batches = pa.concat_tables(list(store.iter_batches(["uid"], batch_size=50)))
    np.testing.assert_array_equal(batches.column(0).to_numpy(), t.column("uid").to_numpy())
    df = store.metadata(["uid", "ctf/df1_A"]).compute()
    np.testing.assert_array_equal(df["uid"].to_numpy(dtype=np.uint64), t.column("uid").to_numpy())
    assert store.optics() is None or store.optics().equals(root.optics())


def test_query_join_stats_on_views(store, expected) -> None:  # noqa: ANN001
    t, _ = expected
    df1 = t.column("ctf/df1_A").to_numpy()
    cut = float(np.median(df1))
    got = api.query(store, f"`ctf/df1_A` < {cut}", columns=["ctf/df1_A"])
    np.testing.assert_array_equal(got["uid"].to_numpy(dtype=np.uint64), t.column("uid").to_numpy()[df1 < cut])
    st = api.stats(store, "defocus")
    assert st["summary"]["count"] == t.num_rows
    mean = (t.column("ctf/df1_A").to_numpy().astype(np.float64) + t.column("ctf/df2_A").to_numpy()) / 2
    assert st["summary"]["mean"] == pytest.approx(mean.mean(), rel=1e-9)
    from cryoframe.query.join import joined_table

    j = joined_table([store, store])
    assert j.num_rows == t.num_rows


def test_query_out_of_a_view_collapses_onto_the_root(store, root, expected, tmp_path: Path) -> None:  # noqa: ANN001
    t, rows = expected
    df1 = t.column("ctf/df1_A").to_numpy()
    cut = float(np.median(df1))
    v2 = api.query(store, f"`ctf/df1_A` < {cut}", out=tmp_path / "v2.cf")
    assert v2.manifest["view"]["parent"] == str(root.path if store.view is not None else store.path)
    np.testing.assert_array_equal(v2.table(["uid"]).column(0).to_numpy(), t.column("uid").to_numpy()[df1 < cut])
    if store.view is not None:
        np.testing.assert_array_equal(v2.image_rows(), rows[df1 < cut])
    info = api.info(v2)
    assert info["view"]["n_selected"] == v2.n and info["view"]["parent_hash"].startswith("blake2b:")
    assert api.info(root)["view"] is None


def test_subset_of_view_adds_computed_posterior(store, expected, tmp_path: Path) -> None:  # noqa: ANN001
    from sklearn.mixture import GaussianMixture

    t, _ = expected
    r = api.subset(store, tmp_path / "sub", by="error2d", components=2, plots=False, tol=1e-8, max_iter=500)
    v = t.column("alignments2D/error").to_numpy().astype(np.float64)
    sk = GaussianMixture(2, tol=1e-8, max_iter=500, random_state=0).fit(v[:, None])
    order = np.argsort(sk.means_.ravel())
    rank = np.empty(2, int)
    rank[order] = [0, 1]
    lab = rank[sk.predict(v[:, None])]
    post = sk.predict_proba(v[:, None]).max(axis=1)
    for k, s in enumerate(r.sets):
        assert s.view is not None and s.view.root.view is None
        got = s.table(["uid", "subset/probability"])
        np.testing.assert_array_equal(got.column(0).to_numpy(), t.column("uid").to_numpy()[lab == k])
        np.testing.assert_allclose(got.column(1).to_numpy(), post[lab == k], atol=1e-4)
    assert r.summary["gmm"]["fit_seconds"] > 0
    # a derived statistic (average defocus) is stored as an added column
    r2 = api.subset(store, tmp_path / "sub2", by="defocus", mode="thresholds", thresholds=[15000.0], plots=False)
    both = np.concatenate([s.table(["subset/statistic"]).column(0).to_numpy() for s in r2.sets])
    mean = (t.column("ctf/df1_A").to_numpy().astype(np.float64) + t.column("ctf/df2_A").to_numpy()) / 2
    np.testing.assert_allclose(np.sort(both), np.sort(mean))


def test_export_and_class2d_on_views(store, expected, tmp_path: Path) -> None:  # noqa: ANN001
    import starfile

    t, _ = expected
    star = api.export(store, tmp_path / "v.star")
    part = starfile.read(star, always_dict=True)["particles"]
    assert len(part) == t.num_rows
    np.testing.assert_allclose(part["rlnDefocusU"], t.column("ctf/df1_A").to_numpy(), rtol=1e-6)
    c = api.class2d(store, tmp_path / "c.cf", classes=2, iters=1, psi_step_deg=60, offset_range_px=1, plots=False)
    assert c.n == store.n
    np.testing.assert_array_equal(c.table(["uid"]).column(0).to_numpy(), t.column("uid").to_numpy())
    g = api.select2d(c, tmp_path / "g.cf", classes=[0], regroup=2)
    lab = c.table(["alignments2D/class"]).column(0).to_numpy()
    assert g.view is not None and g.n == int((lab == 0).sum())
    groups = g.table(["rlnGroupNumber"]).column(0).to_numpy()
    assert set(groups.tolist()) <= {1, 2}


# -- bad input ---------------------------------------------------------------------------------
def _copy_root(root: ParticleStore, d: Path) -> ParticleStore:
    shutil.copytree(root.path, d / "r.cf", symlinks=True)
    return ParticleStore(d / "r.cf")


def test_parent_moved_or_changed_is_one_clear_error(root, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    r = _copy_root(root, tmp_path)
    v = api.query(r, WHERE, out=tmp_path / "v.cf")
    h = v.manifest["view"]["parent_hash"]
    (tmp_path / "moved").mkdir()
    shutil.move(str(r.path), str(tmp_path / "moved" / "r.cf"))
    with pytest.raises(StoreError, match="not found") as e:
        ParticleStore(v.path)
    assert str(r.path) in str(e.value) and h in str(e.value)
    code, _, err = run_cli("info", v.path)
    assert code == 2 and h in err and err.count("\n") == 1
    # replaced by a different store under the same name
    api.synth(tmp_path / "r.cf", n=300, box=16, classes=3, seed=6, kind="2d")
    with pytest.raises(StoreError, match="changed") as e:
        ParticleStore(v.path)
    assert h in str(e.value)
    code, _, err = run_cli("export", v.path, "--out", tmp_path / "x.star")
    assert code == 2 and not (tmp_path / "x.star").exists()


def test_parent_moved_together_with_view_still_opens(root, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "a").mkdir()
    r = _copy_root(root, tmp_path / "a")
    v = api.query(r, WHERE, out=tmp_path / "a" / "v.cf")
    want = v.table(["uid"])
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    assert ParticleStore(tmp_path / "b" / "v.cf").table(["uid"]).equals(want)


def test_materialize_bad_input(root, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    v = api.query(root, WHERE, out=tmp_path / "v.cf")
    (tmp_path / "exists.cf").mkdir()
    code, _, err = run_cli("materialize", v.path, "--out", tmp_path / "exists.cf")
    assert code == 2 and "already exists" in err and not any((tmp_path / "exists.cf").iterdir())
    code, _, err = run_cli("materialize", root.path, "--out", tmp_path / "m.cf")
    assert code == 2 and "not a view" in err and not (tmp_path / "m.cf").exists()
    code, out, _ = run_cli("info", v.path)
    assert code == 0 and f"view of    {root.path}" in out and f"of {root.n} rows" in out
    code, out, err = run_cli("materialize", v.path, "--out", tmp_path / "m.cf")
    assert code == 0, err
    assert "view of" not in run_cli("info", tmp_path / "m.cf")[1]
    m = ParticleStore(tmp_path / "m.cf")
    assert m.view is None and m.table().equals(v.table()) and [s["op"] for s in m.lineage][-1] == "materialize"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("damage", ["short_bitmap", "out_of_bounds", "unsorted", "count", "missing"])
def test_selection_that_does_not_fit_the_parent(root, tmp_path: Path, damage: str, run_cli) -> None:  # noqa: ANN001
    rows = np.array([3, 7, 11]) if damage != "short_bitmap" else np.arange(0, root.n, 2)
    v = write_view(tmp_path / "v.cf", root, rows, op="test")
    sel = v.path / "selection.npy"
    man = json.loads((v.path / "manifest.json").read_text())
    if damage == "short_bitmap":
        assert man["view"]["encoding"] == "bitmap"
        np.save(sel, np.load(sel)[:-2])
    elif damage == "out_of_bounds":
        np.save(sel, np.array([3, 7, root.n + 5], dtype=np.uint32))
    elif damage == "unsorted":
        np.save(sel, np.array([7, 3, 11], dtype=np.uint32))
    elif damage == "count":
        np.save(sel, np.array([3, 7], dtype=np.uint32))
    else:
        sel.unlink()
    with pytest.raises(StoreError, match="selection"):
        ParticleStore(v.path)
    code, _, err = run_cli("query", v.path, "--where", WHERE, "--out", tmp_path / "q.cf")
    assert code == 2 and "selection" in err and not (tmp_path / "q.cf").exists()


def test_write_view_rejects_bad_rows(root, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="rows 0..299"):
        write_view(tmp_path / "v.cf", root, np.array([1, root.n]), op="test")
    with pytest.raises(InputError, match="mask has 5 entries"):
        write_view(tmp_path / "v.cf", root, np.ones(5, bool), op="test")
    with pytest.raises(InputError, match="added rows"):
        write_view(tmp_path / "v.cf", root, np.array([1, 2]), op="test", added=pa.table({"x": [1.0]}))
    assert list(tmp_path.iterdir()) == []


def test_views_are_small(root, tmp_path: Path) -> None:  # noqa: ANN001
    v = api.query(root, WHERE, out=tmp_path / "v.cf")
    size = sum(p.stat().st_size for p in v.path.rglob("*") if p.is_file())
    meta = sum(p.stat().st_size for p in (root.path / "metadata").rglob("*") if p.is_file())
    assert size < meta / 2
    assert np.load(v.path / "selection.npy").nbytes <= (root.n + 7) // 8


def test_views_of_views_carry_added_and_computed_columns(root, tmp_path: Path) -> None:  # noqa: ANN001
    t = root.table(["uid", "ctf/df1_A", "alignments2D/error"])
    r = api.subset(root, tmp_path / "sub", by="error2d", components=2, plots=False)
    s0 = r.sets[0]
    full = s0.table(["uid", "subset/probability"])
    cut = float(np.median(t.column("ctf/df1_A").to_numpy()))
    v2 = api.query(s0, f"`ctf/df1_A` < {cut}", out=tmp_path / "v2.cf")
    assert v2.view.root.path == root.path and "subset/probability" in v2.fields
    keep = np.isin(full.column(0).to_numpy(), v2.table(["uid"]).column(0).to_numpy())
    np.testing.assert_allclose(v2.table(["subset/probability"]).column(0).to_numpy(),
                               full.column(1).to_numpy()[keep])
    cs = api.export(v2, tmp_path / "v2.cs")
    rec = np.load(cs)
    np.testing.assert_array_equal(rec["uid"], v2.table(["uid"]).column(0).to_numpy())
    np.testing.assert_allclose(rec["subset/probability"], full.column(1).to_numpy()[keep], rtol=1e-6)
    m = api.materialize(v2, tmp_path / "m.cf")
    assert m.table().equals(v2.table())


def test_view_cannot_overwrite_its_parent(root, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    r = _copy_root(root, tmp_path)
    before = r.table(["uid"])
    code, _, err = run_cli("query", r.path, "--where", WHERE, "--out", r.path, "--overwrite")
    assert code == 2 and "own parent" in err
    assert ParticleStore(r.path).view is None and ParticleStore(r.path).table(["uid"]).equals(before)
