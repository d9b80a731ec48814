"""Filter a store with a pandas/dask query expression (backticks around group/field names),
e.g. --where '`ctf/df1_A` < 15000 and `alignments3D/error` > 3'."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli import add_scheduler_args


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--where", help="pandas query expression; omit for all rows")
    p.add_argument("--join", action="append", default=[], metavar="STORE",
                   help="join another store on uid first (repeatable); shared field names get @<store> suffixes")
    p.add_argument("--columns", help="comma-separated fields to keep (uid always kept)")
    p.add_argument("--out", help="write matching rows as a new store (images referenced, not copied)")
    p.add_argument("--head", type=int, help="print the first N matching rows")
    p.add_argument("--json", action="store_true", help="print rows as JSON records")
    p.add_argument("--overwrite", action="store_true")
    add_scheduler_args(p)


def main(args: argparse.Namespace) -> int:
    cols = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if args.out:
        s = api.query(args.store, args.where, columns=cols, out=args.out, overwrite=args.overwrite, join=args.join)
        parent = api.open_store(args.store)
        print(f"{s.n} of {parent.n} particles match -> {s.path}")
        return 0
    head = args.head if args.head is not None else (None if args.json else 10)
    df = api.query(args.store, args.where, columns=cols, head=head, join=args.join)
    if args.json:
        print(df.to_json(orient="records", default_handler=str))
    else:
        import pandas as pd

        with pd.option_context("display.max_columns", 12, "display.width", 160):
            print(df.to_string(max_rows=head or 50))
    return 0
