"""GMM benchmark: cryoframe ``GaussianMixture`` (fused distributed EM) vs scikit-learn.

Seeded 1-D bimodal data (60 % N(-2, 1), 40 % N(3, 0.7²)), two components, ``tol=1e-3``,
``max_iter=100``.  Measured per size:

* sklearn end to end: ``GaussianMixture(2, tol=1e-3, max_iter=100, random_state=0).fit`` (its
  k-means init on all rows + EM);
* EM only, same start: sklearn's own initial parameters (a ``max_iter=0`` fit with the same
  ``random_state``) passed as ``weights_init/means_init/precisions_init`` to both sklearn and
  cryoframe, so both run the same EM trajectory (same ``n_iter_``, same lower bound);
* cryoframe end to end: its default k-means++ init on a 100k sample + EM.

Like for like: both are warmed up first (one small fit each: imports, numba's kernel, sklearn's
OpenMP pools), then each measurement is the best of the same ``--repeat`` runs on both sides; the
thread counts (sklearn's threadpools, cryoframe's chunk pool) are printed and recorded.  Prints the ratios (goal: EM >= 10x faster) and appends a section
to ``bench/RESULTS.md``.

    python bench/bench_gmm.py --rows 1000000 10000000
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, record

HERE = Path(__file__).resolve().parent
KW: dict[str, Any] = {"n_components": 2, "tol": 1e-3, "max_iter": 100}


def data(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    first = rng.random(rows) < 0.6
    return np.where(first, rng.normal(-2.0, 1.0, rows), rng.normal(3.0, 0.7, rows))


def timed(fn: Any, repeat: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run(rows: int, repeat: int) -> dict[str, Any]:
    from sklearn.mixture import GaussianMixture as SkGMM

    from cryoframe.algorithms.gmm import GaussianMixture

    x = data(rows)
    x2 = x[:, None]
    t_sk, sk = timed(lambda: SkGMM(random_state=0, **KW).fit(x2), repeat)
    init = SkGMM(n_components=2, max_iter=0, random_state=0).fit(x2)
    start = {"weights_init": init.weights_, "means_init": init.means_, "precisions_init": init.precisions_cholesky_**2}
    t_sk_em, sk_em = timed(lambda: SkGMM(**KW, **start).fit(x2), repeat)
    t_em, ours_em = timed(lambda: GaussianMixture(**KW, **start).fit(x), repeat)
    t_full, ours = timed(lambda: GaussianMixture(random_state=0, **KW).fit(x), repeat)
    return {"rows": rows, "t_sk": t_sk, "sk": sk, "t_sk_em": t_sk_em, "sk_em": sk_em, "t_em": t_em,
            "ours_em": ours_em, "t_full": t_full, "ours": ours}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeat", type=int, default=3, help="best of N, the same N for both")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # ConvergenceWarning etc. would only clutter the output

    import os
    import shlex
    import sys

    import dask
    import numba
    import sklearn
    from sklearn.mixture import GaussianMixture as SkGMM
    from threadpoolctl import threadpool_info

    import cryoframe
    from cryoframe.algorithms.gmm import GaussianMixture

    GaussianMixture(2, random_state=0).fit(data(10_000))  # warm-up: load/compile the numba kernel
    SkGMM(2, random_state=0).fit(data(10_000)[:, None])  # warm-up: sklearn's imports and thread pools
    sk_threads = max([i["num_threads"] for i in threadpool_info()] or [1])
    our_threads = os.cpu_count() or 1
    lines = [
        f"\n## GMM, both warmed, best of the same runs (`bench/bench_gmm.py`), {time.strftime('%Y-%m-%d')}\n",
        f"Machine: {machine()}. cryoframe {cryoframe.__version__}, scikit-learn {sklearn.__version__}, "
        f"numpy {np.__version__}, numba {numba.__version__}, dask {dask.__version__}. 1-D bimodal data, "
        "2 components, tol 1e-3, max_iter 100, CPU. \"EM only\": both start from sklearn's own initial "
        "parameters (same trajectory); \"fit\": each with its default init (sklearn: k-means on all rows; "
        "cryoframe: k-means++ on a 100k sample). Both warmed up, both best of "
        f"{args.repeat}; threads: sklearn {sk_threads} (threadpoolctl), cryoframe {our_threads} (chunk pool); "
        "lower bound = mean log-likelihood per sample (nats).\n",
        "| rows | sklearn fit s (iter) | sklearn EM only s (iter) | cryoframe EM only s (iter) | EM speed-up | "
        "cryoframe fit s (iter) | fit speed-up | lower bound sklearn / cryoframe (EM only) | "
        "lower bound sklearn / cryoframe (fit) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rows in args.rows:
        print(f"rows={rows:,}")
        r = run(rows, args.repeat)
        sk, sk_em, ours_em, ours = r["sk"], r["sk_em"], r["ours_em"], r["ours"]
        em_ratio, fit_ratio = r["t_sk_em"] / r["t_em"], r["t_sk"] / r["t_full"]
        print(f"  sklearn fit       {r['t_sk']:8.3f} s  n_iter {sk.n_iter_:3d}  lower bound {sk.lower_bound_:.10f}")
        print(f"  sklearn EM only   {r['t_sk_em']:8.3f} s  n_iter {sk_em.n_iter_:3d}  lower bound {sk_em.lower_bound_:.10f}")
        print(f"  cryoframe EM only {r['t_em']:8.3f} s  n_iter {ours_em.n_iter_:3d}  lower bound {ours_em.lower_bound_:.10f}")
        print(f"  cryoframe fit     {r['t_full']:8.3f} s  n_iter {ours.n_iter_:3d}  lower bound {ours.lower_bound_:.10f}")
        print(f"  EM speed-up {em_ratio:.1f}x, end-to-end speed-up {fit_ratio:.1f}x (goal >= 10x)")
        lines.append(
            f"| {rows:,} | {r['t_sk']:.3f} ({sk.n_iter_}) | {r['t_sk_em']:.3f} ({sk_em.n_iter_}) | "
            f"{r['t_em']:.3f} ({ours_em.n_iter_}) | {em_ratio:.1f}x | {r['t_full']:.3f} ({ours.n_iter_}) | "
            f"{fit_ratio:.1f}x | {sk_em.lower_bound_:.8f} / {ours_em.lower_bound_:.8f} | "
            f"{sk.lower_bound_:.8f} / {ours.lower_bound_:.8f} |")
    lines.append(f"\nCommand: `python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
