"""map_partitions / tree_reduce: partition results are reduced exactly (a Fourier-volume-like sum
over partitions equals the one-pass sum), per-row inputs reach the right partition, fan-in holds."""

from __future__ import annotations

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from cryoframe.distributed.mapreduce import map_partitions, sum_reduce, tree_reduce


def _partial_volume(block: np.ndarray, weights: np.ndarray, ids: dict[str, np.ndarray], scale: np.ndarray):  # noqa: ANN202
    """A stand-in for back-projection: per-partition (num, den) sums plus the particle ids seen."""
    f = np.fft.rfft2(block)
    num = (weights[:, None, None] * f).sum(0) * scale
    den = np.full(f.shape[1:], float(np.sum(weights**2)))
    return {"num": num, "den": den, "ids": ids["uid"].astype(np.float64).sum(keepdims=True)}


def test_tree_sum_over_partitions_equals_the_one_pass_sum() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(103, 8, 8))
    w = rng.uniform(size=103)
    uid = np.arange(103, dtype=np.uint64) * 7
    scale = np.array(2.0)
    got = map_partitions(_partial_volume, da.from_array(x, chunks=(50, 4, 8)), scale, per_rows=[w, {"uid": uid}],
                         chunk=10, reduce=sum_reduce, fan_in=3)
    ref = _partial_volume(x, w, {"uid": uid}, scale)
    np.testing.assert_allclose(got["num"], ref["num"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["den"], ref["den"])
    assert got["ids"][0] == uid.sum()
    parts = map_partitions(lambda b, rows: (b.shape[0], rows.tolist()), da.from_array(x), per_rows=[uid], chunk=40)
    assert [p[0] for p in parts] == [40, 40, 23]
    assert sum((p[1] for p in parts), []) == uid.tolist()


def test_tree_reduce_keeps_order_and_fan_in() -> None:
    seen: list[int] = []

    def cat(*xs: list[int]) -> list[int]:
        seen.append(len(xs))
        return sum(xs, [])

    out = dask.compute(tree_reduce([dask.delayed([i]) for i in range(20)], cat, fan_in=4))[0]
    assert out == list(range(20)) and max(seen) <= 4 and len(seen) == 5 + 2 + 1
    with pytest.raises(ValueError, match="fan_in"):
        tree_reduce([dask.delayed(1)], cat, fan_in=1)


def test_dataframe_partitions_and_bad_input() -> None:
    df = dd.from_pandas(pd.DataFrame({"a": np.arange(30.0)}), npartitions=4)
    assert float(map_partitions(lambda p: np.array(p["a"].sum()), df, reduce=sum_reduce)) == 435.0
    with pytest.raises(ValueError, match="per_rows"):
        map_partitions(lambda p, r: r, df, per_rows=[np.arange(30)])
    with pytest.raises(TypeError, match="dask array"):
        map_partitions(lambda p: p, 3)
