"""Make a mask MRC (as relion_mask_create): threshold a map, extend it by N px and give it a
raised-cosine soft edge of M px; or a soft sphere (--radius)."""

from __future__ import annotations

import argparse

from cryoframe import api


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("map", nargs="?", help="MRC map (optional with --radius --box --psize)")
    p.add_argument("--out", required=True, help="output MRC")
    p.add_argument("--threshold", type=float, help="binarise at this density (relion --ini_threshold)")
    p.add_argument("--extend", type=float, default=0.0, help="extend the binary mask by this (px; < 0 shrinks)")
    p.add_argument("--soft-edge", type=float, default=0.0, help="raised-cosine edge width (px)")
    p.add_argument("--radius", type=float, help="soft sphere of this radius (px) instead of a threshold")
    p.add_argument("--box", type=int, help="--radius without a map: box (px)")
    p.add_argument("--psize", type=float, help="pixel size (Å) when there is no map or its header has none")
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    s = api.mask(args.map, args.out, threshold=args.threshold, extend_px=args.extend, soft_edge_px=args.soft_edge,
                 radius_px=args.radius, box=args.box, psize_A=args.psize, overwrite=args.overwrite)
    print(f"mask {s['box_px']}^3 px, {s['psize_A']:.3f} Å/px, {s['voxels_inside']} voxels >= 0.5 -> {s['out']}")
    return 0
