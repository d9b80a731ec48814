"""End-to-end `cryoframe subset` benchmark: time and peak RSS on large metadata-only stores.

For each size a seeded synthetic store is written once (``bench/_work``), then
``cryoframe subset STORE --by scale --mode gmm --components 2`` runs in a fresh process.  As the
peer, scikit-learn's GaussianMixture is fitted on the same values in the same run (values read
from the store; its time excludes the read).  Appends a section to ``bench/RESULTS.md``.

    python bench/bench_subset.py --rows 1000000 10000000
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

RUN = """
import json, resource, sys, time
from cryoframe import api
t = time.perf_counter()
r = api.subset(sys.argv[1], sys.argv[2], by="scale", mode="gmm", components=2, seed=0, overwrite=True)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loglik": r.summary["gmm"]["log_likelihood"], "n_iter": r.summary["gmm"]["n_iter"],
                  "counts": [s["count"] for s in r.summary["sets"]]}))
"""

PEER = """
import json, resource, sys, time
import numpy as np
from sklearn.mixture import GaussianMixture
from cryoframe.storage import ParticleStore
v = ParticleStore(sys.argv[1]).table(["alignments3D/alpha_min"]).column(0).to_numpy().astype(np.float64)[:, None]
t = time.perf_counter()
g = GaussianMixture(n_components=2, tol=1e-3, max_iter=100, random_state=0).fit(v)
lab = g.predict(v)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loglik": float(g.lower_bound_), "n_iter": int(g.n_iter_)}))
"""


def run(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from _common import machine, record

    from cryoframe.testing import synth_store

    WORK.mkdir(exist_ok=True)
    lines = [f"\n## Subset end to end (`bench/bench_subset.py`), {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()}. `subset --by scale --mode gmm --components 2` in a fresh process (read, "
             "statistic, GMM fit, per-set stores, plots); peer: scikit-learn GaussianMixture fit + predict on the "
             "same values (read excluded).\n",
             "| rows | cryoframe subset s | peak RSS MB | GMM log-lik | sklearn fit+predict s | sklearn RSS MB | "
             "sklearn log-lik |", "|---|---|---|---|---|---|---|"]
    for rows in args.rows:
        store = WORK / f"synth_meta_{rows}.cf"
        if not (store / "manifest.json").exists():
            t = time.perf_counter()
            synth_store(store, rows, kind="3d", classes=4, metadata_only=True, overwrite=True, seed=0)
            print(f"  synthesized {rows} rows in {time.perf_counter() - t:.1f} s")
        out = WORK / f"subset_{rows}"
        ours = run(RUN, str(store), str(out))
        peer = run(PEER, str(store))
        shutil.rmtree(out, ignore_errors=True)
        print(f"rows={rows}: cryoframe subset {ours['seconds']:.2f} s ({ours['maxrss_mb']:.0f} MB), "
              f"loglik {ours['loglik']:.6f}; sklearn {peer['seconds']:.2f} s ({peer['maxrss_mb']:.0f} MB), "
              f"loglik {peer['loglik']:.6f}")
        lines.append(f"| {rows:,} | {ours['seconds']:.2f} | {ours['maxrss_mb']:.0f} | {ours['loglik']:.6f} | "
                     f"{peer['seconds']:.2f} | {peer['maxrss_mb']:.0f} | {peer['loglik']:.6f} |")
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
