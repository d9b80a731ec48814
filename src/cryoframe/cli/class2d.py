"""Reference-free 2D classification (RELION-style regularised likelihood EM or VDAM minibatches,
random or EMAN2-style MSA initialisation) over a store's particle images."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli import add_iterative_job_args, add_scheduler_args, seed_type
from cryoframe.types import Class2DAlgorithm, Class2DInit, Class2DScale, CtfMode, choices


def add_args(p: argparse.ArgumentParser) -> None:
    add_scheduler_args(p)
    p.add_argument("store")
    p.add_argument("--classes", type=int, help="number of classes K (default 50)")
    p.add_argument("--iters", type=int, help="iterations (total, including resumed ones; default 25)")
    p.add_argument("--T", dest="tau_fudge", type=float, help="regularisation T (RELION --tau2_fudge; default 2)")
    p.add_argument("--mask-diameter", type=float, help="soft circular mask diameter (Å); default 0.9 x box")
    p.add_argument("--psi-step", type=float, help="in-plane angular step (deg; default 6)")
    p.add_argument("--offset-range", type=float, help="translation search range (px; default 5)")
    p.add_argument("--offset-step", type=float, help="translation step (px; default 1)")
    p.add_argument("--ctf", dest="ctf", action="store_true", default=None, help="CTF-correct (default)")
    p.add_argument("--no-ctf", dest="ctf", action="store_false", default=None)
    p.add_argument("--ctf-mode", choices=choices(CtfMode),
                   help="full CTF in the likelihood (default), or phase flipping only (RELION --only_flip_phases)")
    p.add_argument("--no-zero-mask", dest="zero_mask", action="store_false", default=None,
                   help="do not mask particles with zeros outside --mask-diameter (averages are still masked)")
    p.add_argument("--limit-e-step-resolution", type=float, help="E-step resolution limit (Å)")
    p.add_argument("--no-center", dest="center", action="store_false", default=None, help="do not re-centre class averages")
    p.add_argument("--algorithm", choices=choices(Class2DAlgorithm), help="default em")
    p.add_argument("--init", choices=choices(Class2DInit), help="default random")
    p.add_argument("--nbasis", type=int, help="MSA: PCA basis size (default 10)")
    p.add_argument("--seed", type=seed_type, help="default 0")
    p.add_argument("--scale", choices=choices(Class2DScale),
                   help="per-particle contrast scale: sample (default; per class/angle/shift under a N(1, 0.3^2) "
                        "prior, so junk gathers in flat classes), none (as RELION), particle (one per particle)")
    p.add_argument("--no-outliers", dest="outliers", action="store_false", default=None,
                   help="keep every particle in a class (default: particles that fit no class -- evidence over an "
                        "empty pick < 3 nats or low-resolution misfit > 2 -- get class K, the outliers, and leave "
                        "the averages)")
    add_iterative_job_args(p, "resume from the store's checkpoint, with its options")


def main(args: argparse.Namespace) -> int:
    s = api.class2d(args.store, args.out, classes=args.classes, iters=args.iters, tau_fudge=args.tau_fudge,
                    mask_diameter_A=args.mask_diameter, psi_step_deg=args.psi_step, offset_range_px=args.offset_range,
                    offset_step_px=args.offset_step, ctf=args.ctf,
                    ctf_mode=args.ctf_mode, zero_mask=args.zero_mask,
                    limit_e_step_resolution_A=args.limit_e_step_resolution, center=args.center,
                    algorithm=args.algorithm, init=args.init, nbasis=args.nbasis, seed=args.seed,
                    scale=args.scale, outliers=args.outliers, device=args.device, resume=args.resume, plots=not args.no_plots, overwrite=args.overwrite)
    print(f"classified {s.n} particles into {s.lineage[-1]['params']['classes']} classes -> {s.path} "
          f"(class averages, model.json, gallery in {s.extras_dir()})")
    return 0
