"""Project a map (as relion_project): at the poses of a store (--poses) or at N random poses (--n),
optionally CTF-multiplied and noisy; writes a store with the images and the poses/CTF used."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli import add_scheduler_args, seed_type


def add_args(p: argparse.ArgumentParser) -> None:
    add_scheduler_args(p)
    p.add_argument("map", help="MRC map")
    p.add_argument("--out", required=True, help="output store")
    p.add_argument("--poses", help="store whose alignments3D/pose, shift and CTF are used (rows copied)")
    p.add_argument("--n", type=int, help="number of random poses (instead of --poses)")
    p.add_argument("--ctf", action="store_true", help="multiply by each particle's CTF")
    p.add_argument("--snr", type=float, help="add white Gaussian noise at this signal-to-noise ratio")
    p.add_argument("--max-shift", type=float, default=0.0, help="--n: random shifts up to this (px)")
    p.add_argument("--defocus", type=float, nargs=2, default=(10000.0, 25000.0), metavar=("MIN", "MAX"),
                   help="--n --ctf: random defocus range (Å)")
    p.add_argument("--psize", type=float, help="pixel size (Å) when the map header has none")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--device", choices=["cpu", "gpu", "auto"], default="cpu")
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    s = api.project(args.map, args.out, poses=args.poses, n=args.n, ctf=args.ctf, snr=args.snr, seed=args.seed,
                    max_shift_px=args.max_shift, defocus_A=tuple(args.defocus), psize_A=args.psize,
                    device=args.device, overwrite=args.overwrite)
    print(f"projected {s.n} images ({s.box} px, {s.psize_A:.3f} Å/px) -> {s.path}")
    return 0
