"""Scale benchmark: how `synth --metadata-only` and `subset --by scale --mode gmm` grow from 1e6 to
1e8 rows (time and peak RSS, each step in a fresh process).  Goal: subset at 1e8 rows within 4 GB.

    python bench/bench_scale.py --rows 1000000 10000000 100000000 [--keep]

Stores go to ``bench/_work`` (1e8 rows of metadata is ~15 GB on disk; removed unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
sys.path.insert(0, str(HERE))

SYNTH = """
import json, resource, sys, time
from cryoframe.testing import synth_store
t = time.perf_counter()
s = synth_store(sys.argv[1], int(sys.argv[2]), kind="3d", classes=4, metadata_only=True, overwrite=True, seed=0)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SUBSET = """
import json, resource, sys, time
from cryoframe import api
t = time.perf_counter()
r = api.subset(sys.argv[1], sys.argv[2], by="scale", mode="gmm", components=2, seed=0, overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "n_iter": r.summary["gmm"]["n_iter"], "means": r.summary["gmm"]["means"]}))
"""


def run(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from _common import machine, record

    WORK.mkdir(exist_ok=True)
    lines = [f"\n## Scale (`bench/bench_scale.py`), {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()}. Each step in a fresh process; peak RSS from getrusage. "
             "subset = read the statistic column, distributed-EM GMM, per-set stores, plots.\n",
             "| rows | synth --metadata-only s | synth RSS MB | store GB | subset s | subset RSS MB | GMM iters |",
             "|---|---|---|---|---|---|---|"]
    prev, prev_rows = None, 1
    for rows in args.rows:
        store = WORK / f"scale_{rows}.cf"
        out = WORK / f"scale_{rows}_subset"
        syn = run(SYNTH, str(store), str(rows))
        size = du(store)
        sub = run(SUBSET, str(store), str(out))
        growth = "" if prev is None else f" (x{sub['seconds'] / prev:.1f} time for x{rows / prev_rows:.0f} rows)"
        print(f"rows={rows}: synth {syn['seconds']:.1f} s / {syn['maxrss_mb']:.0f} MB, store {size:.2f} GB; "
              f"subset {sub['seconds']:.1f} s / {sub['maxrss_mb']:.0f} MB{growth}", flush=True)
        lines.append(f"| {rows:,} | {syn['seconds']:.1f} | {syn['maxrss_mb']:.0f} | {size:.2f} | {sub['seconds']:.1f} | "
                     f"{sub['maxrss_mb']:.0f} | {sub['n_iter']} |")
        prev, prev_rows = sub["seconds"], rows
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
