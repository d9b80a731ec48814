"""Write a view store (the output of subset, query --out, select2d) as a full, standalone store.

A view holds only a selection of its parent's rows and the columns its job added; it needs the
parent in place.  ``materialize`` copies the selected rows' metadata (parent + added columns) into
a plain store that no longer depends on the parent's metadata (images stay referenced).
"""

from __future__ import annotations

import argparse

from cryoframe import api


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("view", help="a view store")
    p.add_argument("--out", required=True, help="the new store (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    s = api.materialize(args.view, args.out, overwrite=args.overwrite)
    print(f"materialized {s.n} particles -> {s.path}")
    return 0
