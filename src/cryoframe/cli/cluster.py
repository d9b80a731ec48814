"""Start a Dask cluster that other cryoframe verbs join with --scheduler tcp://HOST:PORT, or print
the batch job script a SLURM/PBS cluster would submit. `local` serves N worker processes on
127.0.0.1 (this machine only), `cuda` one worker per local GPU ([gpu] extra), `slurm`/`pbs` submit
--workers jobs from a YAML config (default deploy/<kind>.yaml; dask-jobqueue). The cluster runs
until Ctrl-C (or --for-seconds). --print-job-script shows the job script and submits nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from cryoframe.distributed import SchedulerError, job_script, scheduler

log = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("local", "cuda", "slurm", "pbs"), help="where the workers run")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local: worker processes (default one per core); slurm/pbs: jobs to submit "
                        "(default n_workers from the config)")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="slurm/pbs cluster config (default deploy/<kind>.yaml)")
    p.add_argument("--print-job-script", action="store_true",
                   help="slurm/pbs: print the job script and exit; nothing is submitted")
    p.add_argument("--dashboard", action="store_true", help="serve the Dask dashboard on a free port")
    p.add_argument("--for-seconds", type=float, default=None, metavar="S",
                   help="stop the cluster after S seconds instead of waiting for Ctrl-C")


def main(args: argparse.Namespace) -> int:
    batch = args.kind in ("slurm", "pbs")
    if args.config and not batch:
        raise SchedulerError(f"--config applies to slurm and pbs, not {args.kind}")
    if args.print_job_script:
        if not batch:
            raise SchedulerError(f"--print-job-script applies to slurm and pbs, not {args.kind}")
        script = job_script(args.kind, args.config)
        print(script, end="" if script.endswith("\n") else "\n")
        log.info("(the scheduler address above is a stand-in: `cryoframe cluster %s` puts in its own)", args.kind)
        return 0
    if args.workers is not None and args.workers < (0 if batch else 1):
        raise SchedulerError(f"--workers must be >= {0 if batch else 1}, got {args.workers}")
    if args.workers is not None and args.kind == "cuda":
        raise SchedulerError("--workers does not apply to cuda: it starts one worker per visible GPU "
                             "(select GPUs with CUDA_VISIBLE_DEVICES)")
    spec = f"local:{args.workers}" if args.kind == "local" and args.workers else args.kind
    with scheduler(spec, dashboard=args.dashboard, config=args.config,
                   workers=args.workers if batch else None) as info:
        print(f"scheduler  {info.address}")
        print(f"dashboard  {info.dashboard_link or 'off (add --dashboard)'}")
        print(f"workers    {info.n_workers}{' (as the jobs start)' if batch else ''}")
        where = " from this machine" if args.kind in ("local", "cuda") else ""
        print(f"connect{where} with  --scheduler {info.address}")
        sys.stdout.flush()
        _serve(args.for_seconds)
    return 0


def _serve(seconds: float | None) -> None:
    """Sleep until ``seconds`` pass (forever when None) or Ctrl-C; the caller's ``with`` closes the cluster."""
    deadline = None if seconds is None else time.monotonic() + max(seconds, 0.0)
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5 if deadline is None else min(0.5, max(deadline - time.monotonic(), 0.0)))
    except KeyboardInterrupt:
        log.info("stopping the cluster")
