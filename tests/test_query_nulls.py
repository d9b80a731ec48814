"""Query semantics with NaN and nulls: ``api.query`` selects exactly the rows pyarrow.compute selects
on the same table (Arrow-translated and pandas-evaluated expressions alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cryoframe import api
from cryoframe.schema.types import arrow_field
from cryoframe.storage.store import StoreWriter

N = 400


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory):  # noqa: ANN001, ANN201
    rng = np.random.default_rng(11)
    df1 = rng.uniform(8000, 25000, N).astype(np.float32)
    err = rng.uniform(0, 10, N).astype(np.float32)
    df1[rng.choice(N, 40, replace=False)] = np.nan
    err[rng.choice(N, 40, replace=False)] = np.nan
    err[:3] = [np.inf, -np.inf, np.nan]
    df1_null = np.zeros(N, bool)
    df1_null[rng.choice(N, 30, replace=False)] = True
    err_null = np.zeros(N, bool)
    err_null[rng.choice(N, 30, replace=False)] = True
    cls = rng.integers(0, 4, N).astype(np.uint32)
    fields = [arrow_field("uid", np.dtype("<u8")), arrow_field("ctf/df1_A", np.dtype("<f4")),
              arrow_field("alignments3D/error", np.dtype("<f4")), arrow_field("alignments3D/class", np.dtype("<u4"))]
    t = pa.Table.from_arrays([
        pa.array(np.arange(1, N + 1, dtype=np.uint64) * 7919),
        pa.array(df1, mask=df1_null),  # NaN and null are different values in Arrow
        pa.array(err, mask=err_null),
        pa.array(cls),
    ], schema=pa.schema(fields))
    d = tmp_path_factory.mktemp("nan")
    with StoreWriter(d / "nan.cf", op="test") as w:
        w.write_metadata(t.slice(0, 250))
        w.write_metadata(t.slice(250))
        s = w.commit(psize_A=1.0, box_px=None)
    return s, t


DF, ER, CL = pc.field("ctf/df1_A"), pc.field("alignments3D/error"), pc.field("alignments3D/class")
CASES = [
    ("`ctf/df1_A` < 15000", DF < 15000),
    ("`ctf/df1_A` >= 15000", DF >= 15000),
    ("`alignments3D/error` == 5", ER == 5),
    ("`alignments3D/error` != 5", ER != 5),
    ("`alignments3D/error` > 3 and `ctf/df1_A` < 20000", (ER > 3) & (DF < 20000)),
    ("`alignments3D/error` > 8 or `ctf/df1_A` < 10000", (ER > 8) | (DF < 10000)),
    ("not (`alignments3D/error` > 3)", ~(ER > 3)),
    ("~(`ctf/df1_A` < 15000)", ~(DF < 15000)),
    ("`alignments3D/class` == 2 and not (`ctf/df1_A` >= 12000)", (CL == 2) & ~(DF >= 12000)),
    ("`alignments3D/error`.abs() > 5", pc.abs(ER) > 5),  # pandas-only syntax: the dask path
    ("`alignments3D/error` != `alignments3D/error`", ER != ER),  # NaN test the pandas way
    ("`alignments3D/error`.isnull()", pc.is_null(ER, nan_is_null=True)),
    ("`ctf/df1_A`.notnull()", ~pc.is_null(DF, nan_is_null=True)),
    ("`ctf/df1_A`.isna() or `alignments3D/error` < 1", pc.is_null(DF, nan_is_null=True) | (ER < 1)),
    ("`ctf/df1_A`.notna() and `alignments3D/error`.abs() < 2", ~pc.is_null(DF, nan_is_null=True) & (pc.abs(ER) < 2)),
]


def _reference(t: pa.Table, expr: pc.Expression) -> list[int]:
    """Rows where ``expr`` is true (null -> not selected, as SQL/Arrow filters do)."""
    return t.filter(expr).column("uid").to_pylist()


@pytest.mark.parametrize("engine", ["arrow", "pandas"])
@pytest.mark.parametrize(("where", "expr"), CASES, ids=[c[0] for c in CASES])
def test_query_rows_equal_pyarrow_compute(nan_store, where: str, expr: pc.Expression, engine: str,  # noqa: ANN001
                                          tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    s, t = nan_store
    if engine == "pandas":  # as if the Arrow translator did not know the syntax: the dask/pandas evaluator
        from cryoframe.query import arrow_expr
        from cryoframe.query import expr as expr_mod

        def unsupported(*a, **k):  # noqa: ANN002, ANN003, ANN202
            raise arrow_expr.Unsupported("forced")

        monkeypatch.setattr(expr_mod, "arrow_filter", unsupported)
    want = _reference(t, expr)
    got = api.query(s, where)["uid"].tolist()
    assert got == want, f"{where}: {len(got)} rows, pyarrow.compute selects {len(want)}"
    stored = api.query(s, where, out=tmp_path / "o.cf")
    assert stored.table(["uid"]).column("uid").to_pylist() == want


def test_joined_query_treats_nan_as_null(nan_store, tmp_path: Path) -> None:  # noqa: ANN001
    s, t = nan_store
    other = api.query(s, None, columns=["alignments3D/class"], out=tmp_path / "other.cf")
    got = api.query(s, "`ctf/df1_A`.isnull() and `alignments3D/class@nan` > 0", join=[other])["uid"].tolist()
    assert got == _reference(t, pc.is_null(DF, nan_is_null=True) & (CL > 0))


def test_null_and_nan_survive_a_filtered_store(nan_store, tmp_path: Path) -> None:  # noqa: ANN001
    s, t = nan_store
    o = api.query(s, "`alignments3D/class` != 1", out=tmp_path / "o.cf")
    ref = t.filter(CL != 1)
    got = o.table(["ctf/df1_A"]).column("ctf/df1_A")
    assert got.null_count == ref.column("ctf/df1_A").null_count > 0
    assert pc.sum(pc.is_nan(got)).as_py() == pc.sum(pc.is_nan(ref.column("ctf/df1_A"))).as_py() > 0
