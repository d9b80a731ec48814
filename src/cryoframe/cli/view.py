"""Interactive curation in the browser: linked scatter/histograms (Datashader), box/lasso/range
selections shown as a --where expression, class-average gallery, GMM sets, save as a store.
Serves http://127.0.0.1:PORT/ (only 127.0.0.1 unless --address; use ssh -L from a cluster node)."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli import add_scheduler_args


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--join", action="append", default=[], metavar="STORE",
                   help="join another store on uid (repeatable); shared field names get @<store> suffixes")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="127.0.0.1", help="interface to listen on (default 127.0.0.1 only)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--save-dir", default=".", help="where the save button writes stores (default: .)")
    add_scheduler_args(p)


def main(args: argparse.Namespace) -> int:
    api.view(args.store, join=args.join, save_dir=args.save_dir, serve=True, port=args.port,
             address=args.address, show=not args.no_browser)
    return 0
