"""Query benchmark, like for like: filters, uid joins and ``query --out`` (a view).

Filter: ``cryoframe.query.expr.filter_table(store, where)`` (pandas query string, Parquet read +
filter, all columns returned) vs (a) ``pyarrow.parquet.read_table(files, filters=expr)`` with the same
predicate pushed down and the same columns, and (b) pandas after a full read
(``pd.read_parquet(files).query(where)``).  Join: ``cryoframe.query.join.joined_table([A, B])`` (read +
join on uid, first store's order) vs reading the same columns and ``Table.join(keys="uid")``; A and
B are plain (materialized) stores so both sides read the same Parquet.  Best of ``--repeat`` in one
process.  ``query --out``: CLI wall time (``time.perf_counter`` around the subprocess) of a query
keeping ~10% of the rows, minus the start-up of ``cryoframe query --help`` (best of ``--repeat`` each).
Appends to ``bench/RESULTS.md``.

    python bench/bench_query.py --rows 1000000 10000000
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
sys.path.insert(0, str(HERE))


def best(fn, repeat: int) -> tuple[float, object]:  # noqa: ANN001
    out = None
    t_best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from _common import machine, record

    from cryoframe import api
    from cryoframe.query.expr import filter_table
    from cryoframe.query.join import joined_table
    from cryoframe.testing import synth_store

    WORK.mkdir(exist_ok=True)
    import pandas as pd

    from cryoframe.query.expr import arrow_filter

    where = "`ctf/df1_A` < 15000 and `alignments3D/error` > 9600"
    lines = [f"\n## Query, like for like (`bench/bench_query.py`), {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()}. Filter `{where}` (all columns returned) vs `pyarrow.parquet.read_table"
             "(filters=...)` (same predicate, pushed down) and vs pandas `read_parquet(...).query(...)` (full "
             "read); join of the full store (uid + 4 scalar columns) with a half-size shuffled store (uid + 2 "
             f"columns), both plain stores. Best of {args.repeat}, same process, Parquet reads included on every "
             "side. `query --out`: CLI wall keeping ~10% of the rows (writes a view) minus `cryoframe query --help` "
             "start-up.\n",
             "| rows | filter s | read_table(filters) s | ratio | pandas full read + query s | ratio | join s | "
             "Table.join s | ratio | query --out wall s | start-up s | --out minus start-up s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rows in args.rows:
        store = WORK / f"synth_meta_{rows}.cf"
        if not (store / "manifest.json").exists():
            synth_store(store, rows, kind="3d", classes=4, metadata_only=True, overwrite=True, seed=0)
        s = api.open_store(store)
        files = [str(f) for f in s._files]
        cols = s.fields

        expr = (pc.field("ctf/df1_A") < 15000) & (pc.field("alignments3D/error") > 9600)

        def peer_filter(files: list = files, cols: list = cols, expr=expr) -> pa.Table:  # noqa: ANN001
            return pq.read_table(files, columns=cols, filters=expr)

        def pandas_filter(files: list = files) -> pd.DataFrame:
            return pd.read_parquet(files).query(where)

        assert str(arrow_filter(s, where)) == str(expr), (arrow_filter(s, where), expr)
        t_ours, ours = best(lambda s=s: filter_table(s, where), args.repeat)
        t_peer, peer = best(peer_filter, args.repeat)
        t_pd, pdf = best(pandas_filter, args.repeat)
        assert ours.num_rows == peer.num_rows == len(pdf) and ours.column("uid").equals(peer.column("uid"))

        a_cols = ["uid", "ctf/df1_A", "ctf/df2_A", "alignments3D/error", "alignments3D/alpha"]
        va = api.query(s, None, columns=a_cols[1:], out=WORK / f"join_va_{rows}.cf", overwrite=True)
        vb = api.query(s, "`location/center_x_frac` < 0.5",
                       columns=["pick_stats/ncc_score", "pick_stats/power"], out=WORK / f"join_vb_{rows}.cf",
                       overwrite=True)
        a = api.materialize(va, WORK / f"join_a_{rows}.cf", overwrite=True)
        b = api.materialize(vb, WORK / f"join_b_{rows}.cf", overwrite=True)

        def peer_join(a=a, b=b, a_cols: list = a_cols) -> pa.Table:  # noqa: ANN001
            ta = pa.concat_tables([pq.read_table(f, columns=a_cols) for f in a._files])
            tb = pa.concat_tables([pq.read_table(f, columns=["uid", "pick_stats/ncc_score", "pick_stats/power"])
                                   for f in b._files])
            return ta.join(tb, keys="uid", join_type="inner")

        t_join, j = best(lambda a=a, b=b: joined_table([a, b]), args.repeat)
        t_pjoin, pj = best(peer_join, args.repeat)
        assert j.num_rows == pj.num_rows == b.n
        err = s.table(["alignments3D/error"]).column(0).to_numpy()
        cut = float(np.quantile(err, 0.9))
        w10 = f"`alignments3D/error` > {cut!r}"
        out = WORK / f"q10_{rows}.cf"
        cli = [sys.executable, "-m", "cryoframe", "-q", "query", str(store), "--where", w10, "--out", str(out),
               "--overwrite"]
        t_cli = t_start = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run(cli, check=True)
            t_cli = min(t_cli, time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cryoframe", "query", "--help"], check=True, capture_output=True)
            t_start = min(t_start, time.perf_counter() - t)
        kept = api.open_store(out).n
        assert abs(kept - 0.1 * rows) <= 0.01 * rows, kept
        print(f"rows={rows}: filter {t_ours:.3f} s vs read_table(filters) {t_peer:.3f} s -> {t_ours / t_peer:.2f}x, "
              f"vs pandas {t_pd:.3f} s -> {t_ours / t_pd:.2f}x; join {t_join:.3f} s vs Table.join {t_pjoin:.3f} s -> "
              f"{t_join / t_pjoin:.2f}x; query --out ({kept} rows) {t_cli:.2f} s, start-up {t_start:.2f} s "
              f"(goal: difference <= 1 s)", flush=True)
        lines.append(f"| {rows:,} | {t_ours:.3f} | {t_peer:.3f} | {t_ours / t_peer:.2f} | {t_pd:.3f} | "
                     f"{t_ours / t_pd:.2f} | {t_join:.3f} | {t_pjoin:.3f} | {t_join / t_pjoin:.2f} | {t_cli:.2f} | "
                     f"{t_start:.2f} | {t_cli - t_start:.2f} |")
    lines.append(f"\nCommand: `python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
