"""Per-particle statistics (cryoSPARC "Subset Particles by Statistic") as lazy column expressions.

Every statistic is a vectorised function of a metadata partition (pandas with pyarrow dtypes)
applied with ``map_partitions`` — no Python loop over particles.  Names, fields and meanings
follow ``shared/design/statistics.md``; difference statistics compare two stores joined on
``uid`` and return values aligned with the *final* store's rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from cryoframe.errors import FormatError, InputError
from cryoframe.storage.convert import strip_path_prefix
from cryoframe.storage.store import ParticleStore

if TYPE_CHECKING:
    import pandas as pd  # imported where a dataframe is built (subset of a plain field needs none)

__all__ = [
    "STATISTICS",
    "Statistic",
    "available_statistics",
    "describe_values",
    "resolve_statistic",
    "statistic_values",
]


def vec(s: pd.Series, k: int | None = None) -> np.ndarray:
    """A FixedSizeList (or plain) column as an (n, k) float64 array."""
    arr = pa.array(s.array) if not isinstance(s.array, np.ndarray) else None
    if arr is not None and pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        return flat.reshape(len(s), size)
    out = np.asarray(s.to_numpy(dtype="float64", na_value=np.nan))
    return out.reshape(len(s), -1) if k is None else out.reshape(len(s), k)


def num(s: pd.Series) -> np.ndarray:
    return s.to_numpy(dtype="float64", na_value=np.nan)


@dataclass(frozen=True)
class Statistic:
    """A named statistic: fields it needs (alternatives in order) and how to compute it."""

    name: str
    description: str
    unit: str
    fields: tuple[tuple[str, ...], ...]  # each inner tuple: alternatives, the first present is used
    difference: bool = False
    options: dict[str, Any] = field(default_factory=dict)


STATISTICS: dict[str, Statistic] = {s.name: s for s in [
    Statistic("scale", "per-particle scale (alpha_min, else alpha)", "",
              (("alignments3D/alpha_min", "alignments3D/alpha"),)),
    Statistic("ncc", "picking NCC score", "", (("pick_stats/ncc_score",),)),
    Statistic("power", "picking power score", "", (("pick_stats/power",),)),
    Statistic("defocus", "average defocus", "Å", (("ctf/df1_A",), ("ctf/df2_A",))),
    Statistic("error2d", "2D alignment error", "", (("alignments2D/error",),)),
    Statistic("error3d", "3D alignment error", "", (("alignments3D/error",),)),
    Statistic("class_prob2d", "2D class probability", "", (("alignments2D/class_posterior",),)),
    Statistic("class_prob3d", "3D class probability over --class-indices (sum or max)", "",
              (("alignments3D_multi/class_posterior",),)),
    Statistic("ess2d", "2D class ESS", "", (("alignments2D/class_ess", "alignments2D_multi/class_posterior"),)),
    Statistic("ess3d", "3D class ESS", "", (("alignments3D_multi/class_ess", "alignments3D_multi/class_posterior",
                                              "alignments3D/class_ess"),)),
    Statistic("motion", "total motion of the particle's trajectory", "Å", (("motion/path",), ("motion/idx",))),
    Statistic("location_x", "pick x location (0 left, 1 right)", "fraction", (("location/center_x_frac",),)),
    Statistic("location_y", "pick y location (0 bottom, 1 top)", "fraction", (("location/center_y_frac",),)),
    Statistic("helical_tilt", "rotation about the imaging axis (RELION psi of the 3D pose)", "deg",
              (("alignments3D/pose",),)),
    Statistic("pose3d_diff", "geodesic angle between initial and final 3D poses", "deg",
              (("alignments3D/pose",),), difference=True),
    Statistic("shift3d_diff", "distance between initial and final 3D shifts", "Å",
              (("alignments3D/shift",), ("alignments3D/psize_A", "blob/psize_A")), difference=True),
    Statistic("pose2d_diff", "absolute in-plane angle difference, wrapped to [0, 180]", "deg",
              (("alignments2D/pose",),), difference=True),
    Statistic("shift2d_diff", "distance between initial and final 2D shifts", "Å",
              (("alignments2D/shift",), ("alignments2D/psize_A", "blob/psize_A")), difference=True),
    Statistic("defocus_diff", "absolute difference of average defocus", "Å", (("ctf/df1_A",), ("ctf/df2_A",)),
              difference=True),
]}

_3DVA = re.compile(r"^3dva:(\d+)$")


def _resolve_fields(stat: Statistic, have: Sequence[str]) -> list[str] | None:
    chosen = []
    for alts in stat.fields:
        hit = next((f for f in alts if f in have), None)
        if hit is None:
            return None
        chosen.append(hit)
    return chosen


def resolve_statistic(name: str, store: ParticleStore) -> tuple[Statistic, list[str]]:
    """The statistic called ``name`` and the fields of ``store`` it will read.

    Raises InputError listing what this store can provide (unknown name) or naming the missing
    field (known statistic, field absent).
    """
    m = _3DVA.match(name)
    if m:
        f = f"components_mode_{m.group(1)}/value"
        st = Statistic(name, f"3DVA component {m.group(1)}", "", ((f,),))
    elif name in STATISTICS:
        st = STATISTICS[name]
    else:
        raise InputError(f"unknown statistic {name!r}; this store ({store.path.name}) can provide: "
                         f"{', '.join(available_statistics(store)) or 'none'}")
    fields = _resolve_fields(st, store.fields)
    if fields is None:
        missing = [alts for alts in st.fields if not any(f in store.fields for f in alts)]
        raise InputError(f"{store.path}: statistic {name!r} needs field {' or '.join(missing[0])}, "
                         f"which this store does not have")
    return st, fields


def available_statistics(store: ParticleStore) -> list[str]:
    """Statistics whose fields ``store`` has (difference ones need a second store with them too)."""
    out = [n for n, st in STATISTICS.items() if _resolve_fields(st, store.fields) is not None]
    out += sorted({f"3dva:{m.group(1)}" for f in store.fields
                   if (m := re.match(r"^components_mode_(\d+)/value$", f))}, key=lambda s: int(s.split(":")[1]))
    return out


# -- partition functions ---------------------------------------------------------------------
def _rot_angles_deg(pose: np.ndarray) -> np.ndarray:
    import warnings

    from scipy.spatial.transform import Rotation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Rotation.from_rotvec(pose).as_euler("ZYZ", degrees=True)


def _class_prob(post: np.ndarray, indices: Sequence[int] | None, agg: str) -> np.ndarray:
    k = post.shape[1]
    idx = list(range(k)) if not indices else list(indices)
    bad = [i for i in idx if i < 0 or i >= k]
    if bad:
        raise InputError(f"--class-indices {bad} out of range: alignments3D_multi/class_posterior has {k} classes "
                         f"(0..{k - 1})")
    sel = post[:, idx]
    if agg == "sum":
        return sel.sum(axis=1)
    if agg == "max":
        return sel.max(axis=1)
    raise InputError(f"--class-agg must be sum or max, not {agg!r}")


def _single(name: str, fields: list[str], df: pd.DataFrame, opts: dict[str, Any]) -> np.ndarray:
    c = [df[f] for f in fields]
    if name == "defocus":
        return (num(c[0]) + num(c[1])) / 2
    if name == "class_prob3d":
        return _class_prob(vec(c[0]), opts.get("class_indices"), opts.get("class_agg", "sum"))
    if name in ("ess2d", "ess3d"):
        if fields[0].endswith("class_posterior"):
            p = vec(c[0])
            return 1.0 / (p**2).sum(axis=1)
        return num(c[0])
    if name == "helical_tilt":
        return _rot_angles_deg(vec(c[0], 3))[:, 2]
    if name == "motion":
        return _motion(df[fields[0]], df[fields[1]], df, opts)
    return num(c[0])


def _difference(name: str, fields: list[str], fin: pd.DataFrame, ini: pd.DataFrame) -> np.ndarray:
    f0 = fields[0]
    if name == "pose3d_diff":
        from scipy.spatial.transform import Rotation

        a, b = vec(ini[f0], 3), vec(fin[f0], 3)
        ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
        out = np.full(len(fin), np.nan)
        if ok.any():
            rel = Rotation.from_rotvec(a[ok]).inv() * Rotation.from_rotvec(b[ok])
            out[ok] = np.degrees(rel.magnitude())
        return out
    if name in ("shift3d_diff", "shift2d_diff"):
        d = vec(fin[f0], 2) - vec(ini[f0], 2)
        return num(fin[fields[1]]) * np.sqrt((d**2).sum(axis=1))
    if name == "pose2d_diff":
        d = np.degrees(np.abs(num(fin[f0]) - num(ini[f0]))) % 360.0
        return np.where(d > 180.0, 360.0 - d, d)
    if name == "defocus_diff":
        a = (num(ini["ctf/df1_A"]) + num(ini["ctf/df2_A"])) / 2
        b = (num(fin["ctf/df1_A"]) + num(fin["ctf/df2_A"])) / 2
        return np.abs(b - a)
    raise InputError(f"{name} is not a difference statistic")


def _motion(paths: pd.Series, idx: pd.Series, df: pd.DataFrame, opts: dict[str, Any]) -> np.ndarray:
    """Total trajectory length in Å: Σ‖Δ‖ over frames × ``motion/psize_A``.

    Trajectory files are ``.npy`` arrays of shape (n_particles, n_frames, 2) in pixels (one file
    per micrograph, ``motion/idx`` selects the particle) or (n_frames, 2) for one particle.
    """
    base = Path(opts.get("project_dir") or ".")
    p = strip_path_prefix(paths)
    ix = idx.to_numpy(dtype="int64")
    psize = num(df["motion/psize_A"]) if "motion/psize_A" in df.columns else np.ones(len(df))
    out = np.full(len(df), np.nan)
    cache: Callable[[str], np.ndarray] = _trajectory_loader(base)
    for path in np.unique(p):
        sel = np.nonzero(p == path)[0]
        traj = cache(path)
        if traj.ndim == 2:
            traj = traj[None]
        if traj.ndim != 3 or traj.shape[-1] != 2:
            raise FormatError(f"{base / path}: motion trajectory layout {traj.shape} not understood; "
                              "expected (n_particles, n_frames, 2) or (n_frames, 2) in pixels")
        if ix[sel].max() >= traj.shape[0]:
            raise FormatError(f"{base / path}: motion/idx {int(ix[sel].max())} past the end "
                              f"({traj.shape[0]} trajectories)")
        t = traj[ix[sel]].astype(np.float64)
        out[sel] = np.sqrt((np.diff(t, axis=1) ** 2).sum(axis=2)).sum(axis=1) * psize[sel]
    return out


def _trajectory_loader(base: Path) -> Callable[[str], np.ndarray]:
    memo: dict[str, np.ndarray] = {}

    def load(path: str) -> np.ndarray:
        if path not in memo:
            full = base / path
            if not full.is_file():
                raise FormatError(f"{full}: motion trajectory file named by motion/path not found "
                                  "(pass --project-dir)")
            try:
                memo[path] = np.load(full, allow_pickle=False)
            except Exception as exc:
                raise FormatError(f"{full}: motion trajectory file not readable as .npy ({exc})") from exc
        return memo[path]

    return load


def statistic_values(
    final: ParticleStore,
    name: str,
    *,
    initial: ParticleStore | None = None,
    class_indices: Sequence[int] | None = None,
    class_agg: str = "sum",
    project_dir: str | None = None,
    extra_columns: Sequence[str] = (),
) -> Any:
    """Lazy dask dataframe with ``uid``, ``extra_columns`` and ``value`` (float64, NaN = missing).

    Partition-aligned with ``final``'s metadata.  Difference statistics look up ``initial`` by
    uid (particles absent from ``initial`` get NaN).
    """
    import pandas as pd

    st, fields = resolve_statistic(name, final)
    if st.difference and initial is None:
        raise InputError(f"{name} is a difference statistic: pass --initial (the store before refinement)")
    if not st.difference and initial is not None:
        raise InputError(f"{name} compares nothing: --initial applies only to difference statistics "
                         f"({', '.join(n for n, s in STATISTICS.items() if s.difference)})")
    opts = {"class_indices": list(class_indices) if class_indices else None, "class_agg": class_agg,
            "project_dir": project_dir}
    if name == "class_prob3d" and class_agg not in ("sum", "max"):
        raise InputError(f"--class-agg must be sum or max, not {class_agg!r}")
    need = list(dict.fromkeys(["uid", *fields, *extra_columns]))
    if name == "motion" and "motion/psize_A" in final.fields:
        need.append("motion/psize_A")
    ddf = final.metadata(need, include_internal=True)
    meta = pd.DataFrame({"uid": pd.Series(dtype="uint64[pyarrow]"),
                         **{c: ddf._meta[c] for c in extra_columns if c != "uid"},
                         "value": pd.Series(dtype="float64")})
    if not st.difference:
        def part(df: pd.DataFrame) -> pd.DataFrame:
            out = df[[c for c in meta.columns if c in df.columns]].copy()
            out["value"] = _single(name, fields, df, opts) if len(df) else np.empty(0)
            return out

        return ddf.map_partitions(part, meta=meta)
    assert initial is not None
    _, ifields = resolve_statistic(name, initial)
    if name in ("shift3d_diff", "shift2d_diff"):
        ifields = ifields[:1]
    tbl = initial.table(list(dict.fromkeys(["uid", *ifields])))
    ini = tbl.to_pandas(types_mapper=pd.ArrowDtype).set_index("uid")
    if not ini.index.is_unique:
        raise InputError(f"{initial.path}: duplicate uids")
    common = final.table(["uid"]).column(0).to_numpy()
    if not np.isin(common, ini.index.to_numpy(dtype="uint64")).any():
        raise InputError(f"{final.path.name} and {initial.path.name} have no uids in common; "
                         "difference statistics join the two stores on uid")

    def dpart(df: pd.DataFrame, ini: pd.DataFrame) -> pd.DataFrame:
        out = df[[c for c in meta.columns if c in df.columns]].copy()
        if not len(df):
            out["value"] = np.empty(0)
            return out
        pos = ini.index.get_indexer(pd.Index(df["uid"]))
        found = pos >= 0
        vals = np.full(len(df), np.nan)
        if found.any():
            sub_ini = ini.iloc[pos[found]].reset_index(drop=True)
            sub_fin = df.iloc[np.nonzero(found)[0]].reset_index(drop=True)
            vals[found] = _difference(name, fields, sub_fin, sub_ini)
        out["value"] = vals
        return out

    import dask

    return ddf.map_partitions(dpart, dask.delayed(ini), meta=meta)


def describe_values(values: np.ndarray) -> dict[str, Any]:
    """count/finite/mean/std/min/quantiles/max of a statistic's values (NaN-aware)."""
    v = np.asarray(values, dtype=np.float64)
    fin = v[np.isfinite(v)]
    d: dict[str, Any] = {"count": int(v.size), "n_finite": int(fin.size), "n_missing": int(v.size - fin.size)}
    if fin.size:
        q = np.quantile(fin, [0.01, 0.25, 0.5, 0.75, 0.99])
        d.update(mean=float(fin.mean()), std=float(fin.std()), min=float(fin.min()),
                 p01=float(q[0]), p25=float(q[1]), median=float(q[2]), p75=float(q[3]), p99=float(q[4]),
                 max=float(fin.max()))
    return d
