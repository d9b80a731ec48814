"""Write a deterministic synthetic store with ground truth (images of K templates or 3D
projections with CTF and noise, cryoSPARC-named statistics from known mixtures)."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli import seed_type
from cryoframe.types import SynthKind, choices


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", "--rows", dest="n", type=int, default=4000, help="number of particles")
    p.add_argument("--box", type=int, default=64, help="box size (px)")
    p.add_argument("--classes", type=int, default=8, help="number of distinct templates / volumes")
    p.add_argument("--snr", type=float, default=0.05, help="signal-to-noise ratio (variance ratio)")
    p.add_argument("--kind", choices=choices(SynthKind), default="2d", help="2D templates or projections of 3D volumes")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--junk", type=float, default=0.0,
                   help="fraction of junk images: empty picks, one-off debris, ice/carbon edges (truth view -1)")
    p.add_argument("--metadata-only", action="store_true", help="no images (fast; 1e8 rows in bounded memory)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    s = api.synth(args.out, n=args.n, box=args.box, classes=args.classes, snr=args.snr, seed=args.seed,
                  kind=args.kind, metadata_only=args.metadata_only, overwrite=args.overwrite, junk=args.junk)
    print(f"synthesized {s.n} particles ({args.kind}, {args.classes} classes, box {args.box}) -> {s.path}")
    return 0
