"""End-to-end `cryoframe subset` vs scikit-learn's GaussianMixture.fit alone, like for like.

For each size a seeded synthetic store is written once (``bench/_work``).  Then, in one invocation,
``--repeat`` times each (best of the same number of runs):

* ours: ``cryoframe subset STORE --by scale --mode gmm --components 2 --out DIR`` (plots on) as a
  subprocess, wall time by ``time.perf_counter`` around it (process start to exit: imports, read,
  fit, labels, views, plots), peak RSS from ``wait4``; the fit's own time from ``summary.json``
  (``gmm.fit_seconds``);
* peer: ``sklearn.mixture.GaussianMixture(n_components=2, tol=1e-3, max_iter=100, random_state=0).fit``
  on the same float64 values (read from the store beforehand, not timed) in a fresh process; only
  ``fit`` is timed (no import, no predict).

Both are cold in the same way (fresh process each run; numba's compiled kernel comes from its
on-disk cache).  Threads: both use every core (sklearn's OpenMP/BLAS and cryoframe's thread pool),
printed in the table.  Output size: bytes of the subset's output directory (views + plots +
summary) vs the parent's ``metadata/``.  Appends a section to ``bench/RESULTS.md``.

    python bench/bench_subset.py --rows 5000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
sys.path.insert(0, str(HERE))

PEER = """
import json, sys, time
import numpy as np
import pyarrow.parquet as pq
from pathlib import Path
from sklearn.mixture import GaussianMixture
files = sorted((Path(sys.argv[1]) / "metadata").glob("*.parquet"))
v = pq.read_table(files, columns=["alignments3D/alpha_min"]).column(0).to_numpy().astype(np.float64)[:, None]
from threadpoolctl import threadpool_info
t = time.perf_counter(); c = time.process_time()
g = GaussianMixture(n_components=2, tol=1e-3, max_iter=100, random_state=0).fit(v)
dt = time.perf_counter() - t; cpu = time.process_time() - c
print(json.dumps({"seconds": dt, "cpu": cpu, "loglik": float(g.lower_bound_), "n_iter": int(g.n_iter_),
                  "means": sorted(g.means_.ravel().tolist()),
                  "threads": max([i["num_threads"] for i in threadpool_info()] or [1])}))
"""


def run_cli(store: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "cryoframe", "-q", "subset", str(store), "--by", "scale", "--mode", "gmm",
           "--components", "2", "--out", str(out), "--overwrite"]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode() if p.stderr else ""
    if p.returncode != 0:
        raise RuntimeError(err)
    summ = json.loads((out / "summary.json").read_text())
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"seconds": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
            "fit": summ["gmm"]["fit_seconds"], "loglik": summ["gmm"]["log_likelihood"], "n_iter": summ["gmm"]["n_iter"],
            "means": summ["gmm"]["means"], "out_bytes": size, "timing": summ.get("timing_s"), "cmd": " ".join(shlex.quote(c) for c in cmd)}


def run_peer(store: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", PEER, str(store)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side (best is reported)")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--no-peer", action="store_true",
                    help="skip scikit-learn (e.g. at 1e8 rows, where the goals are peak memory and output size)")
    args = ap.parse_args()
    from _common import machine, record

    from cryoframe.testing import synth_store

    WORK.mkdir(exist_ok=True)
    lines = [f"\n## Subset end to end vs scikit-learn fit alone (`bench/bench_subset.py`), "
             f"{time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()} (shared with other jobs: wall and CPU seconds both given). ours = "
             "`cryoframe subset S --by scale --mode gmm --components 2` (plots on), process start to exit; "
             "fit = its `summary.json` `gmm.fit_seconds`; peer = sklearn `GaussianMixture(2, tol=1e-3, max_iter=100)"
             ".fit` alone on the same float64 values (fresh process, import and read not timed). Best of "
             f"{args.repeat} each. Output = the subset directory (views, plots, summary) vs the parent's metadata/.\n",
             "| rows | subset wall s | subset CPU s | peak RSS MB | fit s | sklearn fit s | sklearn fit CPU s | "
             "sklearn threads | "
             "sklearn fit / subset wall | sklearn fit / fit | output MB | parent metadata MB | output % | "
             "log-lik ours / sklearn |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rows in args.rows:
        store = WORK / f"synth_meta_{rows}.cf"
        if not (store / "manifest.json").exists():
            t = time.perf_counter()
            synth_store(store, rows, kind="3d", classes=4, metadata_only=True, overwrite=True, seed=0)
            print(f"  synthesized {rows} rows in {time.perf_counter() - t:.1f} s")
        out = WORK / f"subset_{rows}"
        runs = [run_cli(store, out) for _ in range(args.repeat)]
        ours = min(runs, key=lambda r: r["seconds"])
        fit = min(r["fit"] for r in runs)
        nan = float("nan")
        peer = ({"seconds": nan, "cpu": nan, "threads": "not run", "loglik": nan} if args.no_peer else
                min((run_peer(store) for _ in range(args.repeat)), key=lambda r: r["seconds"]))
        meta = sum(f.stat().st_size for f in (store / "metadata").rglob("*") if f.is_file())
        shutil.rmtree(out, ignore_errors=True)
        r_e2e, r_fit = peer["seconds"] / ours["seconds"], peer["seconds"] / fit
        print(f"rows={rows}: subset {ours['seconds']:.2f} s wall ({ours['cpu']:.2f} s CPU, {ours['maxrss_mb']:.0f} MB), "
              f"fit {fit:.3f} s; sklearn fit {peer['seconds']:.2f} s -> {r_e2e:.2f}x end to end (goal >= 3), "
              f"{r_fit:.1f}x fit (goal >= 10); output {ours['out_bytes'] / 1e6:.2f} MB = "
              f"{100 * ours['out_bytes'] / meta:.3f}% of {meta / 1e6:.0f} MB; sklearn fit CPU {peer['cpu']:.2f} s; "
              f"phases of the best run (s, after start-up): {ours['timing']}", flush=True)
        lines.append(f"| {rows:,} | {ours['seconds']:.2f} | {ours['cpu']:.2f} | {ours['maxrss_mb']:.0f} | {fit:.3f} | "
                     f"{peer['seconds']:.2f} | {peer['cpu']:.2f} | {peer['threads']} | {r_e2e:.2f} | {r_fit:.1f} | "
                     f"{ours['out_bytes'] / 1e6:.2f} | {meta / 1e6:.0f} | {100 * ours['out_bytes'] / meta:.3f} | "
                     f"{ours['loglik']:.6f} / {peer['loglik']:.6f} |")
    lines.append(f"\nCommand: `python {' '.join(shlex.quote(a) for a in sys.argv)}`; ours: `{ours['cmd']}`")
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
