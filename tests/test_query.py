"""Queries: pandas syntax over the dask dataframe, equal to a pyarrow.compute filter; subsets
reference the parent's images and append lineage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from cryoframe import api
from cryoframe.errors import InputError, StoreError


@pytest.fixture
def store(cs_project, tmp_path: Path):  # noqa: ANN001, ANN201
    return api.import_(cs_project.main, tmp_path / "j2.cf", passthrough=[cs_project.passthrough],
                       project_dir=cs_project.root)


def test_query_matches_pyarrow_compute(store, tmp_path: Path) -> None:  # noqa: ANN001
    where = "`ctf/df1_A` < 15000 and `alignments3D/error` > 3"
    sub = api.query(store, where, out=tmp_path / "hard.cf")
    t = store.table()
    mask = pc.and_(pc.less(t["ctf/df1_A"], 15000), pc.greater(t["alignments3D/error"], 3))
    ref = t.filter(mask)
    assert 0 < sub.n < store.n
    got = sub.table()
    assert got.column("uid").to_pylist() == ref.column("uid").to_pylist()
    for name in store.fields:
        assert got.column(name).equals(ref.column(name)), name
    assert got.schema.field("uid").metadata == t.schema.field("uid").metadata


def test_subset_references_parent_images_and_records_lineage(store, tmp_path: Path) -> None:  # noqa: ANN001
    sub = api.query(store, "`alignments3D/class` == 1", out=tmp_path / "c1.cf")
    assert not (sub.path / "images.zarr").exists()
    assert sub.images_path() == store.images_path()
    rows = np.nonzero(store.table(["alignments3D/class"]).column(0).to_numpy() == 1)[0]
    np.testing.assert_array_equal(sub.images().compute(), store.images().compute()[rows])
    assert [s["op"] for s in sub.lineage] == ["import", "query"]
    assert sub.lineage[-1]["inputs"][0]["hash"] == store.content_hash
    assert sub.lineage[-1]["params"]["where"] == "`alignments3D/class` == 1"
    # subsets of subsets still find the original images
    sub2 = api.query(sub, "`alignments3D/split` == 0", out=tmp_path / "c1s0.cf")
    assert sub2.images().shape[0] == sub2.n
    np.testing.assert_array_equal(sub2.images().compute(), sub.images().compute()[
        sub.table(["alignments3D/split"]).column(0).to_numpy() == 0])


def test_columns_projection_and_head(store, tmp_path: Path) -> None:  # noqa: ANN001
    df = api.query(store, "`alignments3D/error` > 1", columns=["ctf/df1_A"], head=5)
    assert list(df.columns) == ["uid", "ctf/df1_A"] and len(df) == 5
    sub = api.query(store, None, columns=["ctf/df1_A", "alignments3D/pose"], out=tmp_path / "p.cf")
    assert sub.fields == ["uid", "ctf/df1_A", "alignments3D/pose"] and sub.n == store.n
    assert sub.has_images


def test_empty_result_is_a_valid_store(store, tmp_path: Path) -> None:  # noqa: ANN001
    sub = api.query(store, "`ctf/df1_A` < 0", out=tmp_path / "none.cf")
    assert sub.n == 0 and sub.fields == store.fields
    assert api.export(sub, tmp_path / "none.cs").exists()


def test_query_on_uid_keeps_uint64(store) -> None:  # noqa: ANN001
    big = int(np.iinfo(np.uint64).max)
    df = api.query(store, f"uid == {big}")
    assert len(df) == 1 and int(df["uid"].iloc[0]) == big


def test_uid_lists_beyond_int64(store) -> None:  # noqa: ANN001
    """Half of all uids are beyond int64 (cryoSPARC draws them over the full uint64 range): a list of
    them in ``in``/``not in`` failed with "'Compare' object is not callable" (pandas' parser) and an
    overflow (Arrow's kernels)."""
    big = int(np.iinfo(np.uint64).max)
    n = len(api.query(store, None))
    assert len(api.query(store, f"uid in [{big}]")) == 1
    assert len(api.query(store, f"uid not in [ {big} , ]")) == n - 1
    small = int(api.query(store, f"uid != {big}", head=1)["uid"].iloc[0])
    both = api.query(store, f"uid in [{small}, {big}]")
    assert sorted(int(u) for u in both["uid"]) == sorted([small, big])
    with pytest.raises(InputError, match="larger than the uint64 range"):
        api.query(store, f"uid in [1, {big + 1}]")


def test_bad_queries(store, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="ctf/nope"):
        api.query(store, "`ctf/nope` > 1", out=tmp_path / "x.cf")
    with pytest.raises(InputError, match="bad --where"):
        api.query(store, "`ctf/df1_A` >> 1", out=tmp_path / "x.cf")
    with pytest.raises(StoreError, match="no field"):
        api.query(store, None, columns=["nope"], head=1)
    assert not (tmp_path / "x.cf").exists()
    code, _, err = run_cli("query", store.path, "--where", "`bad/field` < 2", "--out", tmp_path / "y.cf")
    assert code == 2 and "bad/field" in err and not (tmp_path / "y.cf").exists()


def test_cli_query_json_and_info(store, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    code, out, _ = run_cli("query", store.path, "--where", "`alignments3D/class` == 0", "--columns",
                           "ctf/df1_A", "--json")
    assert code == 0
    rows = json.loads(out)
    n0 = int((store.table(["alignments3D/class"]).column(0).to_numpy() == 0).sum())
    assert len(rows) == n0 and set(rows[0]) == {"uid", "ctf/df1_A"}
    code, out, _ = run_cli("info", store.path, "--json")
    d = json.loads(out)
    assert d["n_particles"] == store.n and d["box_px"] == 24 and d["images"]["shape"] == [store.n, 24, 24]
    assert {f["name"] for f in d["fields"]} == set(store.fields)
    code, out, _ = run_cli("info", store.path)
    assert code == 0 and "alignments3D/pose" in out and "lineage" in out


def test_query_on_distributed_local_cluster(store, tmp_path: Path) -> None:  # noqa: ANN001
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster):
        sub = api.query(store, "`alignments3D/error` > 3", out=tmp_path / "lc.cf")
    ref = api.query(store, "`alignments3D/error` > 3", out=tmp_path / "th.cf", scheduler="threads")
    assert sub.table().equals(ref.table())


EXPRESSIONS = [
    "`ctf/df1_A` < 15000",
    "`ctf/df1_A` < 15000 and `alignments3D/error` > 3",
    "`ctf/df1_A` < 15000 & (`alignments3D/error` > 3 | `alignments3D/class` == 2)",
    "not (`alignments3D/class` == 1)",
    "~(`alignments3D/class` != 0)",
    "1 < `alignments3D/error` <= 6",
    "`alignments3D/class` in [0, 2]",
    "`alignments3D/class` not in (1,)",
    "abs(`alignments3D/alpha` - 1) < 0.1",
    "(`ctf/df1_A` + `ctf/df2_A`) / 2 > 16000",
    "`ctf/df2_A` - `ctf/df1_A` > 250",
    "`ctf/type` == 'spline'",
    "`alignments3D/error` * 2 >= 7.5 or `blob/idx` == 3",
    "uid > 9223372036854775807",
    "uid == 18446744073709551615",
    "uid in [18446744073709551615, 3]",
    "uid not in [18446744073709551615]",
    "`alignments3D/error` != `alignments3D/error`",
]


@pytest.mark.parametrize("where", EXPRESSIONS)
def test_arrow_kernels_agree_with_pandas_query(store, where: str) -> None:  # noqa: ANN001
    from cryoframe.query.arrow_expr import to_arrow_expression
    from cryoframe.query.expr import _uint64_literals, filter_table, query_frame

    expr, local = _uint64_literals(where)
    to_arrow_expression(expr, set(store.fields), local)  # translatable: the fast path is what runs
    got = filter_table(store, where).column("uid").to_pylist()
    ref = query_frame(store, where).compute()["uid"].astype("uint64").tolist()
    assert got == ref


def test_untranslatable_expressions_fall_back_to_pandas(store) -> None:  # noqa: ANN001
    from cryoframe.query.arrow_expr import Unsupported, to_arrow_expression
    from cryoframe.query.expr import filter_table, query_frame

    where = "`alignments3D/error`.abs() < 2 and `ctf/type`.str.startswith(\"spl\")"
    with pytest.raises(Unsupported):
        to_arrow_expression(where.replace("`alignments3D/error`", "x"), {"x"})
    got = filter_table(store, where).column("uid").to_pylist()
    assert got == query_frame(store, where).compute()["uid"].astype("uint64").tolist()
