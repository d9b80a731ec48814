"""Summarise a per-particle statistic (count, missing, mean, std, quantiles) and list the
statistics this store can provide."""

from __future__ import annotations

import argparse
import json

from cryoframe import api
from cryoframe.cli import add_scheduler_args
from cryoframe.cli.subset import int_list
from cryoframe.types import ClassAgg, choices


def add_args(p: argparse.ArgumentParser) -> None:
    add_scheduler_args(p)
    p.add_argument("store")
    p.add_argument("--by", help="statistic name (omit to list what this store provides)")
    p.add_argument("--initial", help="initial store for difference statistics")
    p.add_argument("--class-indices")
    p.add_argument("--class-agg", choices=choices(ClassAgg), default="sum")
    p.add_argument("--project-dir")
    p.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    d = api.stats(args.store, args.by, initial=args.initial, class_indices=int_list(args.class_indices),
                  class_agg=args.class_agg, project_dir=args.project_dir)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    print(f"{d['store']}: {d['n_particles']} particles")
    print(f"statistics available: {', '.join(d['available'])}")
    if "summary" in d:
        unit = f" ({d['unit']})" if d["unit"] else ""
        print(f"{d['statistic']}{unit} from {', '.join(d['fields'])}:")
        for k, v in d["summary"].items():
            print(f"  {k:<10} {v:.6g}" if isinstance(v, float) else f"  {k:<10} {v}")
    return 0
