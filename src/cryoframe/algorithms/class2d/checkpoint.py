"""Class2D checkpoints: the state after every iteration, to continue a run (``warm_start``).

``class2d_itNNN.npz`` holds the model (averages, priors, noise spectra, tau2, resolution shells,
VDAM running sums) and ``class2d_itNNN_particles.npz`` the per-particle assignments; both carry a
JSON ``meta`` (iteration, n, box, parameters, history, RNG state).  Only the newest particle file
is kept.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cryoframe.errors import InputError
from cryoframe.storage.atomic import atomic_path

__all__ = ["PARTICLE_KEYS", "RESUME_FREE", "load", "params_json", "save"]

PARTICLE_KEYS = ("labels", "posterior_max", "psi_deg", "shift", "ess", "loglik", "gain", "scale", "misfit")
RESUME_FREE = {"n_iter", "checkpoint_dir", "device", "chunk_size", "warm_start"}
"""Parameters a continued run may change."""


def params_json(params: dict[str, Any]) -> str:
    """The estimator parameters a checkpoint must match (JSON; paths as strings)."""
    p = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in params.items() if k not in RESUME_FREE}
    return json.dumps(p, sort_keys=True)


def save(d: Path, st: dict[str, Any], rng: np.random.Generator, n: int, box: int, params: str) -> None:
    """Write iteration ``st["iteration"]``: model arrays and per-particle arrays (two .npz, each
    written to a temporary name and renamed); older per-particle files are removed."""
    it = st["iteration"]
    model = {key: st[key] for key in ("refs", "priors", "sigma2", "tau2", "res_shell", "wsum", "e_data")}
    meta = {"iteration": it, "n": n, "box": box, "params": params, "history": st["history"],
            "rng": rng.bit_generator.state}
    run = {f"run_{key}": v for key, v in (st["run"] or {}).items()}
    parts = {key: st[key] for key in PARTICLE_KEYS}
    pfile = d / f"class2d_it{it:03d}_particles.npz"
    for path, arrays in ((pfile, parts), (d / f"class2d_it{it:03d}.npz", {**model, **run})):
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, meta=np.asarray(json.dumps(meta)), **arrays)
    for old in d.glob("class2d_it*_particles.npz"):
        if old != pfile:
            old.unlink()


def load(d: Path, n: int, box: int, n_groups: int, params: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The state and RNG state of the last complete iteration in ``d`` (None when there is none);
    InputError naming the differing parameters when it was written for other data or parameters."""
    found = [(int(m.group(1)), f) for f in d.glob("class2d_it*.npz")
             if (m := re.fullmatch(r"class2d_it(\d+)\.npz", f.name))]
    for _, f in sorted(found, reverse=True):
        pf = f.with_name(f.stem + "_particles.npz")
        if not pf.exists():
            continue
        with np.load(f, allow_pickle=False) as z, np.load(pf, allow_pickle=False) as zp:
            meta = json.loads(str(z["meta"]))
            if (meta["n"] != n or meta["box"] != box or meta["params"] != params
                    or np.atleast_2d(z["sigma2"]).shape[0] != n_groups):
                mine, theirs = json.loads(params), json.loads(meta["params"])
                diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
                what = f"parameters differ: {', '.join(diff)}" if diff else "other data"
                raise InputError(f"{f}: checkpoint written for other data or parameters ({what}); "
                                 "cannot resume")
            st = {key: z[key] for key in z.files if key != "meta" and not key.startswith("run_")}
            run = {key[4:]: z[key] for key in z.files if key.startswith("run_")}
            st.update({key: zp[key] for key in zp.files if key != "meta"})
            for key in ("gain", "misfit"):  # checkpoints written before these existed
                st.setdefault(key, np.full(n, np.nan, np.float32))
        st.update(run=run or None, history=meta["history"], iteration=meta["iteration"])
        return st, meta["rng"]
    return None
