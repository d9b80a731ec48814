"""Select particles of 2D classes: by class indices, or --auto with the 0-1 class score class2d
stores per class (contrast, compactness, resolution, confidence, size; see
cryoframe.algorithms.class2d.rank) and --threshold; --auto also drops particles with less evidence
over an empty pick than --min-evidence, or a larger low-resolution misfit to their class than
--max-misfit."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli.subset import int_list


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a store written by class2d")
    p.add_argument("--classes", help="comma-separated 0-based class indices to keep")
    p.add_argument("--auto", action="store_true", help="keep classes whose score >= --threshold")
    p.add_argument("--threshold", type=float, default=None,
                   help="minimum class score in [0, 1] for --auto (default: the ranker's default threshold)")
    p.add_argument("--min-evidence", type=float, default=None, metavar="NATS",
                   help="drop particles whose evidence over an empty pick (alignments2D/evidence) is below NATS "
                        "(default with --auto: 3; with --classes: no floor)")
    p.add_argument("--max-misfit", type=float, default=None, metavar="Z",
                   help="drop particles whose low-resolution misfit to their class (alignments2D/misfit, ~N(0, 1) "
                        "for a particle that fits) is above Z (default with --auto: 2; with --classes: no limit)")
    p.add_argument("--regroup", type=int, help="re-assign noise groups (rlnGroupNumber) into ~N groups of similar defocus and scale")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    s = api.select2d(args.store, args.out, classes=int_list(args.classes), auto=args.auto, threshold=args.threshold,
                     min_evidence=args.min_evidence, max_misfit=args.max_misfit, regroup=args.regroup, overwrite=args.overwrite)
    print(f"selected {s.n} particles -> {s.path}")
    return 0
