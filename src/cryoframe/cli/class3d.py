"""3D classification without alignment (cryoSPARC 3D Classification, RELION Class3D --skip_align):
consensus + per-particle scale, O-EM then F-EM, solvent/focus masks, per-class FSC filtering, soft or
hard reconstructions.  Options left out take the defaults (or, with --continue, the checkpoint's)."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli import add_iterative_job_args, add_scheduler_args, positive_int, seed_type


def add_args(p: argparse.ArgumentParser) -> None:
    add_scheduler_args(p)
    p.add_argument("store")
    p.add_argument("--classes", type=int, help="number of classes K (default 10)")
    p.add_argument("--iters", type=int, help="total iterations, O-EM then F-EM (default 25; the F-EM cap)")
    p.add_argument("--target-resolution", type=float, help="working resolution (Å): Fourier-crop box and Nyquist")
    p.add_argument("--solvent-mask", help="solvent mask .mrc (same box and pixel size as the particles); default: "
                   "an automatic mask from the consensus (extras/solvent_mask_auto.mrc)")
    p.add_argument("--no-auto-mask", dest="auto_mask", action="store_const", const=False,
                   help="without --solvent-mask, use no solvent mask instead of the automatic one")
    p.add_argument("--focus-mask", help="focus mask .mrc: outside it the consensus replaces the class")
    p.add_argument("--scale", choices=["optimal", "input", "none"], help="per-particle scale (default none; optimal: least squares against the consensus)")
    p.add_argument("--init", choices=["simple", "pca"], help="initialisation mode (default simple)")
    p.add_argument("--class-similarity", type=float, help="0..1 (default 0.5)")
    p.add_argument("--oem-epochs", type=int, help="O-EM epochs (default 2)")
    p.add_argument("--oem-batch", type=int, help="O-EM batch size per class (default 1000)")
    p.add_argument("--oem-lr", type=float, help="O-EM initial learning rate (default 0.4)")
    p.add_argument("--switch-threshold", type=float, help="F-EM convergence: %% of particles switching (default 2)")
    p.add_argument("--rms-threshold", type=float, help="also converge when the size-weighted relative RMS "
                   "density change is below this")
    p.add_argument("--hard", action="store_const", const=True, help="force hard classification (reconstructions)")
    p.add_argument("--no-fsc-filter", dest="fsc_filter", action="store_const", const=False,
                   help="filter classes with the consensus FSC instead of their own")
    p.add_argument("--tau2-fudge", type=float, help="regularisation T (default 4, as RELION 3D)")
    p.add_argument("--cross-half", action="store_const", const=True,
                   help="score each half set's particles against the other half's class maps")
    p.add_argument("--starts", type=int, help="initialisations scored by likelihood (default 1)")
    p.add_argument("--no-ctf", dest="ctf", action="store_const", const=False)
    p.add_argument("--seed", type=seed_type)
    p.add_argument("--partition-size", type=positive_int, help="particles per Dask task (default 2000)")
    add_iterative_job_args(p, "resume from the store's checkpoint")


def main(args: argparse.Namespace) -> int:
    s = api.class3d(args.store, args.out, classes=args.classes, iters=args.iters,
                    target_resolution_A=args.target_resolution, solvent_mask=args.solvent_mask,
                    focus_mask=args.focus_mask, scale=args.scale, init=args.init,
                    class_similarity=args.class_similarity, oem_epochs=args.oem_epochs, oem_batch=args.oem_batch,
                    oem_lr=args.oem_lr, switch_threshold=args.switch_threshold, rms_threshold=args.rms_threshold,
                    hard=args.hard, fsc_filter=args.fsc_filter, tau2_fudge=args.tau2_fudge, cross_half=args.cross_half,
                    auto_mask=args.auto_mask, starts=args.starts,
                    ctf=args.ctf, seed=args.seed, partition_size=args.partition_size, device=args.device,
                    resume=args.resume, plots=not args.no_plots, overwrite=args.overwrite)
    print(f"classified {s.n} particles in 3D -> {s.path} (volumes, model.json, plots, classes/ in {s.extras_dir()})")
    return 0
