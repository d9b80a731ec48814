"""Query benchmark: cryoframe filter vs ``pyarrow.compute`` and uid join vs ``pyarrow.Table.join``.

Filter: ``cryoframe.query.expr.filter_table(store, where)`` (pandas query string, Parquet read +
filter) vs the same Parquet files read with pyarrow and filtered with hand-written
``pyarrow.compute`` calls.  Join: ``cryoframe.query.join.joined_table([A, B])`` (read + join on uid,
first store's order) vs reading the same columns and ``Table.join(keys="uid")``.  Best of
``--repeat`` in one process; goal ≤ 1.5x the peer.  Appends to ``bench/RESULTS.md``.

    python bench/bench_query.py --rows 1000000 10000000
"""

from __future__ import annotations

import argparse
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
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from _common import machine, record

    from cryoframe import api
    from cryoframe.query.expr import filter_table
    from cryoframe.query.join import joined_table
    from cryoframe.testing import synth_store

    WORK.mkdir(exist_ok=True)
    where = "`ctf/df1_A` < 15000 and `alignments3D/error` > 9600"
    lines = [f"\n## Query (`bench/bench_query.py`), {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()}. Filter `{where}` (all columns returned); join of the full store "
             "(uid + 4 scalar columns) with a half-size shuffled store (uid + 2 columns). Best of "
             f"{args.repeat}, same process, reads from Parquet included on both sides.\n",
             "| rows | filter s | pyarrow.compute s | ratio | join s | Table.join s | ratio |", "|---|---|---|---|---|---|---|"]
    for rows in args.rows:
        store = WORK / f"synth_meta_{rows}.cf"
        if not (store / "manifest.json").exists():
            synth_store(store, rows, kind="3d", classes=4, metadata_only=True, overwrite=True, seed=0)
        s = api.open_store(store)
        files = [str(f) for f in s._files]
        cols = s.fields

        def peer_filter(files: list = files, cols: list = cols) -> pa.Table:
            t = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
            mask = pc.and_(pc.less(t["ctf/df1_A"], 15000), pc.greater(t["alignments3D/error"], 9600))
            return t.filter(mask)

        t_ours, ours = best(lambda s=s: filter_table(s, where), args.repeat)
        t_peer, peer = best(peer_filter, args.repeat)
        assert ours.num_rows == peer.num_rows and ours.column("uid").equals(peer.column("uid"))

        a_cols = ["uid", "ctf/df1_A", "ctf/df2_A", "alignments3D/error", "alignments3D/alpha"]
        a = api.query(s, None, columns=a_cols[1:], out=WORK / f"join_a_{rows}.cf", overwrite=True)
        b = api.query(s, "`location/center_x_frac` < 0.5",
                      columns=["pick_stats/ncc_score", "pick_stats/power"], out=WORK / f"join_b_{rows}.cf",
                      overwrite=True)

        def peer_join(a=a, b=b, a_cols: list = a_cols) -> pa.Table:  # noqa: ANN001
            ta = pa.concat_tables([pq.read_table(f, columns=a_cols) for f in a._files])
            tb = pa.concat_tables([pq.read_table(f, columns=["uid", "pick_stats/ncc_score", "pick_stats/power"])
                                   for f in b._files])
            return ta.join(tb, keys="uid", join_type="inner")

        t_join, j = best(lambda a=a, b=b: joined_table([a, b]), args.repeat)
        t_pjoin, pj = best(peer_join, args.repeat)
        assert j.num_rows == pj.num_rows == b.n
        print(f"rows={rows}: filter {t_ours:.3f} s vs pyarrow.compute {t_peer:.3f} s -> {t_ours / t_peer:.2f}x "
              f"(goal <= 1.5); join {t_join:.3f} s vs Table.join {t_pjoin:.3f} s -> {t_join / t_pjoin:.2f}x", flush=True)
        lines.append(f"| {rows:,} | {t_ours:.3f} | {t_peer:.3f} | {t_ours / t_peer:.2f} | {t_join:.3f} | "
                     f"{t_pjoin:.3f} | {t_join / t_pjoin:.2f} |")
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
