"""Run the ratio benchmarks in bench/ (each prints its ratio against a peer run in the same
session: cryosparc-tools, scikit-learn, pyarrow, relion_reconstruct) and append the results to
bench/RESULTS.md."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from cryoframe.errors import CryoframeError

SCRIPTS = {
    "import": "bench_import.py",
    "gmm": "bench_gmm.py",
    "query": "bench_query.py",
    "subset": "bench_subset.py",
    "scale": "bench_scale.py",
    "class2d": "bench_class2d.py",
    "reconstruct": "bench_reconstruct.py",
    "abinitio": "bench_abinitio.py",
    "search3d": "bench_search_relion.py",
}
ROW_SCRIPTS = {"import", "gmm", "query", "subset", "scale"}
"""Benchmarks sized by ``--rows``; ``reconstruct``, ``abinitio`` and ``search3d`` (the pose search beside
RELION's expectation step, which needs ``relion_refine``) run their own defaults (box 64, 4000 particles)."""
DEFAULT = ["import", "gmm", "query", "subset"]


def bench_dir() -> Path:
    """``./bench``, else the bench/ folder of the source checkout cryoframe runs from (bench/ is not
    part of the wheel)."""
    from cryoframe._resources import checkout_root

    root = checkout_root()
    for cand in (Path.cwd() / "bench", *([root / "bench"] if root is not None else [])):
        if (cand / "bench_import.py").is_file():
            return cand
    raise CryoframeError("bench/ scripts not found: run from a checkout of the cryoframe repository")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", nargs="*", metavar="NAME",
                   help=f"benchmarks to run: {', '.join(SCRIPTS)} (default: {' '.join(DEFAULT)})")
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000],
                   help=f"sizes of {', '.join(sorted(ROW_SCRIPTS))} (default 1e6)")
    p.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    p.add_argument("--relion", action="store_true",
                   help="class2d, abinitio: also run RELION 3.1 relion_refine on the same particles (hours on 2 cores)")


def main(args: argparse.Namespace) -> int:
    d = bench_dir()
    unknown = [w for w in args.which if w not in SCRIPTS]
    if unknown:
        raise CryoframeError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    failed = []
    for name in args.which or DEFAULT:
        cmd = [sys.executable, str(d / SCRIPTS[name])]
        if name in ROW_SCRIPTS:
            cmd += ["--rows", *map(str, args.rows)]
        if name in ("class2d", "abinitio") and getattr(args, "relion", False):
            cmd.append("--relion")
        if args.no_record:
            cmd.append("--no-record")
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=d.parent).returncode != 0:
            failed.append(name)
    if failed:
        raise CryoframeError(f"benchmark(s) failed: {', '.join(failed)}")
    if not args.no_record:
        print(f"results appended to {d / 'RESULTS.md'}")
    return 0
