"""Split a store into sets by a per-particle statistic, with a Gaussian mixture or manual thresholds
(cryoSPARC "Subset Particles by Statistic").  Writes --out DIR: summary.json, set_NNN.cf stores
(images referenced), optional set_NNN.cs|.star, and plots/."""

from __future__ import annotations

import argparse

from cryoframe.cli import add_scheduler_args, seed_type
from cryoframe.errors import InputError
from cryoframe.types import ClassAgg, Device, ExportFormat, OnMissing, SubsetMode, choices


def _floats(s: str | None) -> list[float]:
    if not s:
        return []
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError as exc:
        raise InputError(f"--thresholds must be comma-separated numbers, got {s!r}") from exc


def int_list(s: str | None) -> list[int] | None:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (None for an empty option); shared by the verbs taking index lists."""
    if not s:
        return None
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError as exc:
        raise InputError(f"--class-indices must be comma-separated integers, got {s!r}") from exc


def add_args(p: argparse.ArgumentParser) -> None:
    add_scheduler_args(p)
    p.add_argument("store", help="input store (the *final* particles for difference statistics)")
    p.add_argument("--by", required=True, help="statistic: scale, ncc, power, defocus, error2d, error3d, class_prob2d, "
                   "class_prob3d, ess2d, ess3d, motion, location_x, location_y, helical_tilt, 3dva:N, pose3d_diff, "
                   "shift3d_diff, pose2d_diff, shift2d_diff, defocus_diff")
    p.add_argument("--mode", choices=choices(SubsetMode), default="gmm")
    p.add_argument("--components", type=int, default=2, help="GMM components")
    p.add_argument("--min-prob", type=float, help="GMM: drop particles whose best component probability is below")
    p.add_argument("--thresholds", help="comma-separated, increasing: T thresholds give T+1 sets")
    p.add_argument("--initial", help="initial store for difference statistics (joined on uid)")
    p.add_argument("--class-indices", help="class_prob3d: comma-separated 0-based classes")
    p.add_argument("--class-agg", choices=choices(ClassAgg), default="sum", help="class_prob3d: sum or max")
    p.add_argument("--on-missing", choices=choices(OnMissing), default="error",
                   help="particles without a finite value: fail (default), drop, or put in missing.cf")
    p.add_argument("--format", choices=choices(ExportFormat), help="also export each set")
    p.add_argument("--project-dir", help="base directory of motion trajectory files")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--tol", type=float, default=1e-3, help="GMM convergence tolerance (mean log-likelihood)")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--device", choices=choices(Device), default="cpu")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    if not args.no_plots:  # the plot process imports matplotlib while this one imports the job and reads
        from cryoframe.plot.worker import prestart

        prestart()
    from cryoframe import api

    res = api.subset(args.store, args.out, by=args.by, mode=args.mode, components=args.components,
                     min_prob=args.min_prob, thresholds=_floats(args.thresholds), initial=args.initial,
                     class_indices=int_list(args.class_indices), class_agg=args.class_agg, on_missing=args.on_missing,
                     format=args.format, project_dir=args.project_dir, seed=args.seed, tol=args.tol,
                     max_iter=args.max_iter, plots=not args.no_plots, device=args.device, overwrite=args.overwrite)
    s = res.summary
    print(f"{s['statistic']} ({s['mode']}): {s['n_input']} particles -> {len(s['sets'])} sets, "
          f"{s['n_dropped']} dropped, {s['n_missing']} missing -> {res.out}")
    for e in s["sets"]:
        mean = "n/a" if e["mean"] is None else f"{e['mean']:.4g}"
        print(f"  set {e['index']}: {e['count']} particles, mean {mean} -> {e['path']}")
    if "gmm" in s:
        g = s["gmm"]
        print(f"  GMM: converged {g['converged']} in {g['n_iter']} iterations, log-likelihood {g['log_likelihood']:.6g}")
    return 0
