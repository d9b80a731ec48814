"""Run the 5-minute tour on synthetic data: synthesize a cryoSPARC-like project and a RELION
project, import both, query, export .cs and .star, re-import the exports and check them."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli import seed_type


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", help="where to write (default: ./cryoframe-demo)")
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--seed", type=seed_type, default=0)


def main(args: argparse.Namespace) -> int:
    res = api.demo(args.workdir, n=args.particles, box=args.box, seed=args.seed)
    for line in res["log"]:
        print(line)
    print(f"all files are under {res['workdir']}")
    return 0
