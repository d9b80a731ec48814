"""Import a cryoSPARC .cs (with --passthrough files joined on uid), a RELION .star, or a bare .mrcs."""

from __future__ import annotations

import argparse

from cryoframe import api


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help=".cs, .star or .mrcs file")
    p.add_argument("--out", required=True, help="new store directory (e.g. j24.cf)")
    p.add_argument("--passthrough", action="append", default=[], metavar="CS",
                   help="passthrough .cs joined on uid (repeatable)")
    p.add_argument("--project-dir", help="cryoSPARC project / RELION project directory that image paths are relative to")
    p.add_argument("--metadata-only", action="store_true", help="skip images")
    p.add_argument("--psize", type=float, help="pixel size (Å) for a bare .mrcs with none in its header")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args: argparse.Namespace) -> int:
    s = api.import_(args.path, args.out, passthrough=args.passthrough, project_dir=args.project_dir,
                    metadata_only=args.metadata_only, psize_A=args.psize, overwrite=args.overwrite)
    imgs = f", images {s.n}x{s.box}x{s.box}" if s.has_images else ", metadata only"
    print(f"imported {s.n} particles, {len(s.fields)} fields{imgs} -> {s.path}")
    return 0
