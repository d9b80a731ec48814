"""3D reconstruction from particles with known poses (as relion_reconstruct --ctf): half maps, map,
FSC-weighted map, FSC (unmasked and with --mask masked) and plots in --out DIR."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cryoframe.cli import add_scheduler_args, positive_int, seed_type


def add_args(p: argparse.ArgumentParser) -> None:
    add_scheduler_args(p)
    p.add_argument("store", help="store with alignments3D/pose (+ shift, split, CTF)")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--symmetry", default="C1", help="point group: C1, Cn, Dn, T, O, I (=I2), I1-I4 (RELION's axes)")
    p.add_argument("--max-resolution", type=float, help="highest resolution inserted and kept (Å)")
    p.add_argument("--mask", help="soft mask MRC (same box and pixel size) for the masked FSC")
    p.add_argument("--ctf", dest="ctf", action="store_true", default=True, help="CTF-weight (default)")
    p.add_argument("--no-ctf", dest="ctf", action="store_false")
    p.add_argument("--weights", metavar="FIELD", help="per-particle weight field (e.g. a class posterior)")
    p.add_argument("--regulariser", default="fsc",
                   help="fsc (RELION's tau2 from the half-map FSC), none (as relion_reconstruct) or a constant")
    p.add_argument("--tau2-fudge", type=float, default=1.0, help="T of the fsc regulariser")
    p.add_argument("--seed", type=seed_type, default=0, help="seed of the random half split when the store has none")
    p.add_argument("--device", choices=["cpu", "gpu", "auto"], default="cpu")
    p.add_argument("--partition-size", type=positive_int, default=2000, help="particles per Dask task")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--overwrite", action="store_true")


def prestart(args: argparse.Namespace) -> Callable[[], None] | None:
    """On the CPU with the threads scheduler, start the kernel worker: numba loads the insertion
    kernel in another process while this one imports the job and reads the particles.  Returns what
    stops it."""
    if args.device == "cpu" and args.scheduler in (None, "threads"):
        from cryoframe.geometry import _kernel_worker

        if _kernel_worker.prestart() is not None:
            return _kernel_worker.shutdown
    return None


def main(args: argparse.Namespace) -> int:
    from cryoframe import api

    s = api.reconstruct(args.store, args.out, symmetry=args.symmetry, max_resolution_A=args.max_resolution,
                        mask=args.mask, ctf=args.ctf, weights=args.weights, regulariser=args.regulariser,
                        tau2_fudge=args.tau2_fudge, seed=args.seed, device=args.device,
                        partition_size=args.partition_size, plots=not args.no_plots, overwrite=args.overwrite)
    r = s["resolution_A"]
    print(f"reconstructed {s['n_particles']} particles ({s['particles_per_half']['A']} + "
          f"{s['particles_per_half']['B']}, {s['symmetry']}) -> {s['out']}: FSC 0.143 at {r['0.143']:.2f} Å, "
          f"0.5 at {r['0.5']:.2f} Å")
    return 0
