"""The state an :class:`~cryoframe.algorithms.abinitio.AbInitio` fit evolves: in-memory snapshots
(to keep the best of several random starts) and the on-disk checkpoint ``--continue`` reads.

State: the per-class Fourier sums, the data noise estimate and its particle count, the class
sizes, the random start in use, and the history/slices/events records.  ``sigma2_init`` (fixed by
the data) is saved with the checkpoint but is not part of a snapshot, and so is the resolved
schedule: a continued run keeps the counts and windows its defaults gave when it started.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cryoframe.errors import InputError

__all__ = ["CKPT_NAME", "load", "params", "pinned_schedule", "restore", "save", "snapshot"]

CKPT_NAME = "abinitio_state.npz"
_EVOLVING = ("_sums", "_sigma2_data", "_sigma2_n", "_sizes", "_start", "history_", "slices_", "events_")


def snapshot(m: Any) -> dict[str, Any]:
    """A copy of the evolving state of fit ``m`` (later iterations do not change it)."""
    return {k: copy.deepcopy(getattr(m, k)) for k in _EVOLVING}


def restore(m: Any, state: dict[str, Any]) -> None:
    """Put a :func:`snapshot` back."""
    for k, v in state.items():
        setattr(m, k, v)


def params(m: Any) -> dict[str, Any]:
    """The estimator parameters a checkpoint must match (execution settings excluded)."""
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and not k.endswith("_")
            and k not in ("checkpoint_dir", "device", "checkpoint_every")}


def save(m: Any, t: int) -> None:
    """Write the state after iteration ``t`` to ``m.checkpoint_dir`` (temporary file + rename)."""
    d = Path(m.checkpoint_dir)
    d.mkdir(parents=True, exist_ok=True)
    # float64 as in memory: float32 sums change the continued run at rounding level, enough to move a
    # near-tied particle to another fine pose on some CPUs (the continuation must reproduce the run)
    arrays = {f"sums_{k}": np.asarray(s, dtype=np.float64) for k, s in enumerate(m._sums)}
    meta = {"t": t, "params": params(m), "n": int(m._X.shape[0]), "sigma2_n": m._sigma2_n, "start": m._start,
            "history": m.history_, "events": m.events_, "schedule": m.schedule_.as_dict()}
    tmp = d / f".{CKPT_NAME}"
    with open(tmp, "wb") as fh:
        np.savez(fh, sigma2_init=m._sigma2_init, sigma2_data=m._sigma2_data, sizes=m._sizes,
                 meta=np.frombuffer(json.dumps(meta, default=float).encode(), dtype=np.uint8),
                 **arrays)  # type: ignore[arg-type]  # numpy's stub misreads **arrays
    os.replace(tmp, d / CKPT_NAME)


def load(m: Any) -> int:
    """Read the checkpoint into ``m`` (same data and parameters, iteration counts aside); returns
    the iteration to continue from."""
    if m.checkpoint_dir is None:
        raise InputError("resume needs checkpoint_dir")
    f = Path(m.checkpoint_dir) / CKPT_NAME
    if not f.is_file():
        raise InputError(f"{f}: no ab-initio checkpoint to continue from")
    z = np.load(f)
    meta = json.loads(bytes(z["meta"]).decode())
    mine = json.loads(json.dumps(params(m), default=float))
    theirs = dict(meta["params"])
    theirs.setdefault("normalise_noise", False)  # checkpoints written before the option
    for key in ("initial_iterations", "intermediate_iterations", "final_iterations", "final_passes"):
        mine.pop(key, None)
        theirs.pop(key, None)
    if theirs != mine or meta["n"] != int(m._X.shape[0]):
        raise InputError(f"{f}: checkpoint written for other data or parameters; cannot continue")
    m._sigma2_init = z["sigma2_init"]
    m._sigma2_data = z["sigma2_data"]
    m._sigma2_n = float(meta["sigma2_n"])
    m._start = int(meta.get("start", 0))
    m._sizes = z["sizes"]
    m._sums = [z[f"sums_{k}"].astype(np.float64) for k in range(m.n_classes)]
    m.history_ = meta["history"]
    m.events_ = meta["events"]
    m.schedule_ = pinned_schedule(m, meta.get("schedule"))
    return int(meta["t"])


# parameters whose None means "a default computed from the others"; a continued run keeps the values
# its checkpoint was written with, so a changed default (as the similarity window's in round 2) does
# not change the schedule of the iterations still to run
_DEFAULTED = ("intermediate_iterations", "initial_resolution_A", "class_similarity_anneal_start",
              "class_similarity_anneal_end")


def pinned_schedule(m: Any, saved: dict[str, Any] | None) -> Any:
    """``m.schedule_`` with the defaulted quantities (``m``'s parameter None) taken from the schedule
    ``saved`` in a checkpoint; unchanged for a checkpoint without one (written before they were saved)."""
    if not saved:
        return m.schedule_
    pin = {k: saved[k] for k in _DEFAULTED if getattr(m, k) is None and k in saved}
    sched = dataclasses.replace(m.schedule_, **pin)
    if "class_similarity_anneal_end" in pin:  # the window ends no later than the (possibly new) anneal
        end = sched.initial_iterations + sched.intermediate_iterations
        a0 = sched.class_similarity_anneal_start
        sched = dataclasses.replace(sched, class_similarity_anneal_end=max(a0, min(end, sched.class_similarity_anneal_end)))
    return sched
