"""``cryoframe`` command line: one module per verb (``add_args`` + ``main``), registered here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cryoframe import __version__
from cryoframe.errors import CryoframeError

VERBS = {
    "demo": ("demo", "synthesize, import, query, export and re-import a small dataset"),
    "bench": ("bench", "run the ratio benchmarks in bench/ and record them in bench/RESULTS.md"),
    "class2d": ("class2d", "reference-free 2D classification (EM or VDAM) of a store's images"),
    "select2d": ("select2d", "keep particles of chosen (or auto-selected) 2D classes"),
    "cluster": ("cluster", "start a Dask cluster (local/cuda/slurm/pbs) or print its job script"),
    "import": ("import_", "import a .cs (+ passthroughs), .star or .mrcs into a store"),
    "info": ("info", "describe a store"),
    "materialize": ("materialize", "write a view store's rows as a full (plain) store"),
    "query": ("query", "filter a store with a pandas query expression"),
    "export": ("export", "export a store to .cs or .star"),
    "stats": ("stats", "summarise a per-particle statistic; list the statistics a store provides"),
    "subset": ("subset", "split a store into sets by a statistic (GMM or thresholds)"),
    "synth": ("synth", "write a deterministic synthetic store with ground truth"),
    "reconstruct": ("reconstruct", "3D reconstruction with CTF: half maps, map, FSC (poses from a refinement)"),
    "project": ("project", "project a map at a store's (or random) poses into a new store, as relion_project"),
    "class3d": ("class3d", "3D classification without alignment (O-EM + F-EM, masks, per-particle scale)"),
    "abinitio": ("abinitio", "ab-initio reconstruction: K volumes and 3D poses from particles without poses"),
    "mask": ("mask", "threshold/extend/soft-edge mask of a map (as relion_mask_create) or a soft sphere"),
    "view": ("view", "interactive curation in the browser: linked plots, selections as --where expressions"),
}


def seed_type(text: str) -> int:
    """``--seed``: :func:`cryoframe.types.check_seed` as an argparse type (one error line, exit 2)."""
    from cryoframe.errors import InputError
    from cryoframe.types import check_seed

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    try:
        return check_seed(v, "the seed")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """An integer option that counts something (``--partition-size``): >= 1 (0 divided by zero
    inside class3d, and reconstruct silently ran on it)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_scheduler_args(p: argparse.ArgumentParser) -> None:
    """``--scheduler``/``--dashboard`` for verbs that run Dask graphs."""
    p.add_argument("--scheduler", default=None, metavar="SPEC",
                   help="threads (default), processes, synchronous, local:N, tcp://HOST:PORT, cuda, slurm, pbs")
    p.add_argument("--dashboard", action="store_true", help="start/print the Dask dashboard address")


def add_iterative_job_args(p: argparse.ArgumentParser, continue_help: str) -> None:
    """The options every iterative image job shares (class2d, class3d, abinitio): ``--device``,
    ``--continue`` (resume from the input store's checkpoint), ``--no-plots``, ``--out``, ``--overwrite``."""
    from cryoframe.types import Device, choices

    p.add_argument("--device", choices=choices(Device), default="cpu")
    p.add_argument("--continue", dest="resume", action="store_true", help=continue_help)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``: a verb) one whose other verbs are stubs, so a command line
    imports just the module of the verb it runs (start-up time)."""
    p = argparse.ArgumentParser(prog="cryoframe", description="cryo-EM particle curation as a distributed dataframe")
    p.add_argument("--version", action="version", version=f"cryoframe {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for verb, (mod, help_) in VERBS.items():
        if only is not None and verb != only:
            sub.add_parser(verb, help=help_)
            continue
        m = importlib.import_module(f"cryoframe.cli.{mod}")
        sp = sub.add_parser(verb, help=help_, description=(m.__doc__ or help_).strip())
        m.add_args(sp)
        sp.set_defaults(_main=m.main, _prestart=getattr(m, "prestart", None))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in VERBS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # helper processes that load on the other core while the job starts; stopped when the verb returns
    stop = args._prestart(args) if args._prestart is not None else None
    try:
        if getattr(args, "scheduler", False) is not False:  # compute verbs: run inside the chosen scheduler
            from cryoframe.distributed import progress_context, scheduler

            with scheduler(args.scheduler, dashboard=args.dashboard, quiet=args.quiet) as info:
                if args.dashboard:
                    print(f"dashboard: {info.dashboard_link or 'none (local scheduler without a dashboard)'}",
                          file=sys.stderr)
                with progress_context(args.quiet):
                    return int(args._main(args) or 0)
        return int(args._main(args) or 0)
    except CryoframeError as exc:
        print(f"cryoframe {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryoframe {args.verb}: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    finally:
        if stop is not None:
            stop()


def run() -> None:
    """The console entry point (``cryoframe``, ``python -m cryoframe``): :func:`main`, then exit
    without finalising the interpreter.  By then every output is written and renamed; the exit steps
    that matter still run here -- joining non-daemon threads and the atexit handlers (helper
    processes, Dask clusters, logging) -- and stdout/stderr are flushed.  What is skipped is tearing
    down the modules of Arrow, Zarr, Dask and numba: ~0.08 s, 5% of a small ``reconstruct``."""
    import atexit
    import os
    import threading

    try:
        code = main()
    except BrokenPipeError:  # stdout closed early (``| head``): stop quietly, as the Python docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1

    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter itself calls first at exit
    if shutdown is None:  # pragma: no cover - another Python: exit the ordinary way
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
