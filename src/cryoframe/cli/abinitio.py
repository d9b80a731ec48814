"""Ab-initio reconstruction (cryoSPARC's Ab-Initio Reconstruction): K volumes and 3D poses from
particles without poses, by SGD over growing minibatches with a branch-and-bound pose search."""

from __future__ import annotations

import argparse

from cryoframe import api
from cryoframe.cli import add_iterative_job_args, add_scheduler_args, seed_type


def add_args(p: argparse.ArgumentParser) -> None:
    add_scheduler_args(p)
    p.add_argument("store")
    p.add_argument("--classes", type=int, default=1, help="number of ab-initio classes K")
    p.add_argument("--particles", type=int, help="use a seeded random subset of this many particles "
                   "(K = 1: the rest go to the set extras/sets/unused.cf)")
    p.add_argument("--symmetry", default="C1", help="point group imposed on the volumes: Cn, Dn, T, O, I")
    p.add_argument("--max-resolution", type=float, default=12.0, help="resolution of the final iterations (Å)")
    p.add_argument("--initial-resolution", type=float, help="resolution of the initial iterations (Å; default 35, or box size in Å / 6.4 when that is finer, never finer than --max-resolution)")
    p.add_argument("--initial-iterations", type=int, default=40, help="iterations with fixed hyperparameters")
    p.add_argument("--intermediate-iterations", type=int, default=None,
                   help="iterations annealing them (default: 40 for one class, 80 for several)")
    p.add_argument("--final-iterations", type=int, default=0, help="iterations at the data-determined values")
    p.add_argument("--initial-minibatch", type=int, default=300, help="particles per initial iteration")
    p.add_argument("--final-minibatch", type=int, default=600, help="particles per final iteration")
    p.add_argument("--initial-learning-rate", type=float, default=0.3, help="SGD step of the initial iterations")
    p.add_argument("--final-learning-rate", type=float, default=0.2, help="SGD step of the final iterations")
    p.add_argument("--noise-model", choices=["coloured", "white"], default="coloured")
    p.add_argument("--noise-init-sigmascale", type=float, default=1.0,
                   help="initial noise sd as a multiple of the images' (flat early posteriors)")
    p.add_argument("--noise-priorw", type=float, default=50.0, help="weight (particles) of the initial noise model")
    p.add_argument("--class-similarity", type=float, default=0.1,
                   help="0-1: share of each particle spread evenly over the classes early on")
    p.add_argument("--class-similarity-anneal-start", type=int, help="iteration where the similarity starts "
                   "falling to 0 (default: end of the initial iterations)")
    p.add_argument("--class-similarity-anneal-end", type=int, help="iteration where it reaches 0 "
                   "(default: a tenth of the intermediate iterations after the start)")
    p.add_argument("--coarse-step", type=float, default=15.0, help="angular step of the exhaustive search of the SGD iterations (deg)")
    p.add_argument("--final-coarse-step", type=float, default=15.0,
                   help="coarse angular step of the final branch-and-bound search (deg)")
    p.add_argument("--fine-step", type=float, default=1.875, help="finest angular step (deg)")
    p.add_argument("--shift-range", type=float, default=6.0, help="shift search radius (px)")
    p.add_argument("--shift-step", type=float, default=2.0, help="coarse shift step (px)")
    p.add_argument("--candidates", type=int, default=4, help="poses branched per particle between levels")
    p.add_argument("--final-passes", type=int, default=1, help="search passes over all particles after SGD")
    p.add_argument("--starts", type=int, default=4,
                   help="random starts run through the initial phase; the best-fitting one is continued")
    p.add_argument("--normalise-noise", action="store_true",
                   help="divide each particle by its noise level (outer-shell power): for particles not "
                        "normalised at extraction (raw counts, exposures of different dose)")
    p.add_argument("--no-ctf", dest="ctf", action="store_false", help="ignore the CTF")
    p.add_argument("--seed", type=seed_type, default=0)
    add_iterative_job_args(p, "resume from the store's checkpoint")


def main(args: argparse.Namespace) -> int:
    s = api.abinitio(
        args.store, args.out, classes=args.classes, particles=args.particles, symmetry=args.symmetry,
        max_resolution_A=args.max_resolution, initial_resolution_A=args.initial_resolution,
        initial_iterations=args.initial_iterations, intermediate_iterations=args.intermediate_iterations,
        final_iterations=args.final_iterations, initial_minibatch=args.initial_minibatch,
        final_minibatch=args.final_minibatch, initial_learning_rate=args.initial_learning_rate,
        final_learning_rate=args.final_learning_rate, noise_model=args.noise_model,
        noise_init_sigmascale=args.noise_init_sigmascale, noise_priorw=args.noise_priorw,
        class_similarity=args.class_similarity, class_similarity_anneal_start=args.class_similarity_anneal_start,
        class_similarity_anneal_end=args.class_similarity_anneal_end, coarse_step_deg=args.coarse_step,
        fine_step_deg=args.fine_step, shift_range_px=args.shift_range, shift_step_px=args.shift_step,
        n_candidates=args.candidates, final_passes=args.final_passes, starts=args.starts, final_coarse_step_deg=args.final_coarse_step, ctf=args.ctf, seed=args.seed,
        normalise_noise=args.normalise_noise, device=args.device, resume=args.resume, plots=not args.no_plots,
        overwrite=args.overwrite)
    print(f"ab-initio: {s.n} particles, {args.classes} class(es) -> {s.path} "
          f"(volumes, model.json, plots and per-class sets in {s.extras_dir()})")
    return 0
