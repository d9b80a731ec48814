"""Cross-job queries: stores joined on uid, same-named fields suffixed by store, agreement with
pyarrow Table.join."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_cs

from cryoframe import api
from cryoframe.errors import InputError


def _jobs(tmp_path: Path):  # noqa: ANN202
    rng = np.random.default_rng(9)
    n = 300
    uids = rng.integers(0, 2**64 - 1, n, dtype=np.uint64)
    c2 = np.zeros(n, dtype=[("uid", "<u8"), ("alignments2D/class", "<u4"), ("alignments2D/error", "<f4")])
    c2["uid"] = uids
    c2["alignments2D/class"] = rng.integers(0, 10, n)
    c2["alignments2D/error"] = rng.gamma(2, 1, n)
    keep = rng.permutation(n)[:200]  # the 3D job saw a subset, in another order
    c3 = np.zeros(200, dtype=[("uid", "<u8"), ("alignments3D/error", "<f4"), ("alignments3D/class", "<u4"),
                              ("alignments2D/error", "<f4")])
    c3["uid"] = uids[keep]
    c3["alignments3D/error"] = rng.gamma(2, 1, 200)
    c3["alignments3D/class"] = rng.integers(0, 3, 200)
    c3["alignments2D/error"] = -1.0  # same name as in the 2D job
    picks = np.zeros(n, dtype=[("uid", "<u8"), ("pick_stats/ncc_score", "<f4")])
    picks["uid"] = uids[::-1]
    picks["pick_stats/ncc_score"] = rng.random(n)
    out = []
    for name, rec in (("class2d", c2), ("class3d", c3), ("picks", picks)):
        save_cs(tmp_path / f"{name}.cs", rec)
        out.append(api.import_(tmp_path / f"{name}.cs", tmp_path / f"{name}.cf", metadata_only=True))
    return out


def test_join_matches_pyarrow_and_suffixes_shared_fields(tmp_path: Path) -> None:
    c2, c3, picks = _jobs(tmp_path)
    df = api.query(c2, "`alignments3D/class` == 1 and `pick_stats/ncc_score` > 0.5", join=[c3, picks])
    assert "alignments2D/error@class2d" in df.columns and "alignments2D/error@class3d" in df.columns
    assert "alignments3D/error" in df.columns and "alignments2D/class" in df.columns
    t2, t3, tp = c2.table(), c3.table(), picks.table()
    ref = t2.join(t3.rename_columns([c if c == "uid" else c + "#3" for c in t3.column_names]), keys="uid")
    ref = ref.join(tp, keys="uid")
    m = ref.to_pandas()
    m = m[(m["alignments3D/class#3"] == 1) & (m["pick_stats/ncc_score"] > 0.5)]
    assert sorted(df["uid"].astype("uint64").tolist()) == sorted(m["uid"].tolist())
    order = {int(u): i for i, u in enumerate(t2.column("uid").to_numpy())}
    got = [order[int(u)] for u in df["uid"]]
    assert got == sorted(got)  # first store's order
    assert (df["alignments2D/error@class3d"] == -1).all()


def test_join_to_store_then_subset(tmp_path: Path) -> None:
    c2, c3, picks = _jobs(tmp_path)
    j = api.query(c2, None, join=[c3, picks], out=tmp_path / "joined.cf")
    assert j.n == 200 and j.lineage[-1]["op"] == "join"
    r = api.subset(j, tmp_path / "s", by="ncc", mode="thresholds", thresholds=[0.5], plots=False)
    assert sum(s.n for s in r.sets) == 200
    out = api.export(j, tmp_path / "j.cs")
    rec = np.load(out)
    assert rec.dtype["uid"] == np.dtype("<u8") and "alignments2D/error@class3d" in rec.dtype.names


def test_join_errors(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    c2, c3, _ = _jobs(tmp_path)
    other = np.zeros(2, dtype=[("uid", "<u8"), ("pick_stats/power", "<f4")])
    other["uid"] = [1, 2]
    save_cs(tmp_path / "o.cs", other)
    o = api.import_(tmp_path / "o.cs", tmp_path / "o.cf", metadata_only=True)
    with pytest.raises(InputError, match="no uids in common"):
        api.query(c2, None, join=[o])
    code, _, err = run_cli("query", c2.path, "--join", c3.path, "--where", "`nope/x` > 1")
    assert code == 2 and "nope/x" in err
    code, out, _ = run_cli("query", c2.path, "--join", c3.path, "--head", "3", "--columns", "alignments3D/error")
    assert code == 0 and "alignments3D/error" in out


def test_join_carries_vector_fields(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = np.zeros(20, dtype=[("uid", "<u8"), ("alignments3D/pose", "<f4", (3,))])
    a["uid"] = np.arange(20) + 7
    a["alignments3D/pose"] = rng.normal(size=(20, 3))
    b = np.zeros(10, dtype=[("uid", "<u8"), ("alignments2D/shift", "<f4", (2,))])
    b["uid"] = a["uid"][::2][::-1]
    b["alignments2D/shift"] = rng.normal(size=(10, 2))
    save_cs(tmp_path / "a.cs", a)
    save_cs(tmp_path / "b.cs", b)
    sa = api.import_(tmp_path / "a.cs", tmp_path / "a.cf", metadata_only=True)
    sb = api.import_(tmp_path / "b.cs", tmp_path / "b.cf", metadata_only=True)
    j = api.query(sa, None, join=[sb], out=tmp_path / "j.cf")
    rec = np.load(api.export(j, tmp_path / "j.cs"))
    np.testing.assert_array_equal(rec["uid"], a["uid"][::2])
    np.testing.assert_array_equal(rec["alignments3D/pose"], a["alignments3D/pose"][::2])
    np.testing.assert_array_equal(rec["alignments2D/shift"], b["alignments2D/shift"][::-1])
