"""Export a store to a cryoSPARC .cs or a RELION 3.1 .star (optionally writing .mrcs images)."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.types import ExportFormat, choices


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--format", choices=choices(ExportFormat), help="default: from --out's suffix")
    p.add_argument("--out", required=True, help="output .cs or .star path")
    p.add_argument("--images", action="store_true", help="also write the images as an .mrcs stack")
    p.add_argument("--relion-only", action="store_true",
                   help="STAR: write only RELION labels (drop the _uid/_group/field extras)")
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    s = api.open_store(args.store)
    out = api.export(s, args.out, format=args.format, images=args.images, extra_fields=not args.relion_only,
                     overwrite=args.overwrite)
    print(f"exported {s.n} particles -> {out}")
    return 0
