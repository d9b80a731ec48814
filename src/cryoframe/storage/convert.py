"""Conversions between canonical (cryoSPARC-named) fields and RELION labels.

Conventions (``schemas/fields.json`` lists them per field; checked in tests against RELION's
Euler-matrix formula and pyem's csparc2star):

* 3D pose: rotation vector ``pose`` (rad) <-> ZYZ Euler ``(rot, tilt, psi)`` (deg) with
  ``Rotation.from_rotvec(pose) == Rotation.from_euler("ZYZ", (rot, tilt, psi))``; RELION's
  ``Euler_angles2matrix`` equals ``from_rotvec(pose).as_matrix().T``.
* shifts: cryoSPARC pixels of ``alignments*/psize_A`` <-> RELION 3.1 ``rlnOriginX/YAngst`` (Å),
  3.0 ``rlnOriginX/Y`` (px); same sign.
* classes and random subsets: 0-based <-> 1-based.  Angles in radians <-> degrees.
* ``blob/idx`` (0-based) + ``blob/path`` <-> ``rlnImageName`` ``NNNNNN@path`` (1-based).
"""

from __future__ import annotations

import hashlib
import warnings
from typing import TYPE_CHECKING, TypeAlias, overload

import numpy as np

from cryoframe.errors import FormatError
from cryoframe.schema import field_dictionary, field_spec, optics_labels

__all__ = [
    "canonical_to_relion",
    "deterministic_uids",
    "euler_to_rotvec",
    "parse_image_names",
    "rotvec_to_euler",
    "star_to_canonical",
    "strip_path_prefix",
]

PATH_PREFIX = ">"  # cryoSPARC marks paths of files it imported (`>J1/imported/x.mrcs`); one per value


if TYPE_CHECKING:  # pandas is imported where it is used: ``subset``/``query`` reach this module and need none
    import pandas as pd

Column: TypeAlias = "np.ndarray | pd.Series | list[str] | list[bytes]"
"""A column of paths: a numpy array (``S`` or object), a pandas Series, or a list."""


@overload
def strip_path_prefix(values: str) -> str: ...
@overload
def strip_path_prefix(values: Column) -> np.ndarray: ...
def strip_path_prefix(values: str | Column) -> str | np.ndarray:
    """Paths without cryoSPARC's leading ``>`` marker: exactly one ``>`` removed per value.

    A whole column at once (bytes decoded as UTF-8; returns an object array of ``str``), or one
    ``str``.  ``">>a"`` becomes ``">a"``; a ``>`` elsewhere in the path is kept.
    """
    import pandas as pd

    if isinstance(values, str):
        return values.removeprefix(PATH_PREFIX)
    s = pd.Series(np.asarray(values))
    if s.dtype.kind == "S" or (len(s) and isinstance(s.iloc[0], bytes)):
        s = s.str.decode("utf-8")
    out: np.ndarray = s.astype(str).str.removeprefix(PATH_PREFIX).to_numpy(dtype=object)
    return out


def has_path_prefix(values: Column) -> bool:
    """True when any value (the whole column, not a sample) starts with cryoSPARC's ``>``."""
    import pandas as pd

    a = np.asarray(values)
    if a.dtype.kind == "S":
        return bool(np.char.startswith(a, PATH_PREFIX.encode()).any())
    return bool(pd.Series(a).astype(str).str.startswith(PATH_PREFIX).any())

EXTRA_PREFIX = "_"  # extra STAR columns carrying canonical fields RELION has no label for: `_uid`, `_alignments3D/error`


def rotvec_to_euler(pose: np.ndarray) -> np.ndarray:
    """(n, 3) rotation vectors (rad) -> (n, 3) RELION (rot, tilt, psi) in degrees."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gimbal lock at tilt 0/180 is handled by scipy
        from scipy.spatial.transform import Rotation  # lazy: 0.27 s of start-up

        out: np.ndarray = Rotation.from_rotvec(np.asarray(pose, dtype=np.float64)).as_euler("ZYZ", degrees=True)
        return out


def euler_to_rotvec(angles: np.ndarray) -> np.ndarray:
    """(n, 3) RELION (rot, tilt, psi) degrees -> (n, 3) rotation vectors (rad)."""
    from scipy.spatial.transform import Rotation  # lazy: 0.27 s of start-up

    out: np.ndarray = Rotation.from_euler("ZYZ", np.asarray(angles, dtype=np.float64), degrees=True).as_rotvec()
    return out


def parse_image_names(names: pd.Series, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``NNNNNN@path`` -> (0-based index, path); a name without '@' is image 0 of that file."""
    import pandas as pd

    s = names.astype(str)
    parts = s.str.split("@", n=1, expand=True)
    if parts.shape[1] == 1:
        return np.zeros(len(s), dtype=np.int64), parts[0].to_numpy(dtype=object)
    has_at = parts[1].notna().to_numpy()
    paths = np.where(has_at, parts[1].fillna(""), parts[0]).astype(object)
    nums = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce")
    if nums.isna().any():
        bad = s[nums.isna()].iloc[0]
        raise FormatError(f"{source}: rlnImageName {bad!r} is not of the form NNNNNN@stack.mrcs")
    idx = nums.to_numpy(dtype=np.int64) - 1
    if (idx < 0).any():
        bad = s[idx < 0].iloc[0]
        raise FormatError(f"{source}: rlnImageName {bad!r}: image numbers are 1-based")
    return idx, paths


def deterministic_uids(keys: pd.Series) -> np.ndarray:
    """uint64 uids from a hash of each key and its occurrence number (stable across re-imports)."""
    occ = keys.groupby(keys, sort=False).cumcount().to_numpy()
    out = np.empty(len(keys), dtype=np.uint64)
    for i, (k, o) in enumerate(zip(keys.to_numpy(), occ, strict=True)):
        d = hashlib.blake2b(f"{k}#{o}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(d, "little")
    return out


def _as(spec_name: str, values: np.ndarray) -> np.ndarray:
    spec = field_spec(spec_name)
    if spec is None or spec.dtype.startswith("|S"):
        if spec is not None:
            return np.array([str(v).encode() for v in values], dtype="S")
        return values
    return np.asarray(values).astype(spec.dtype)


def star_to_canonical(particles: pd.DataFrame, optics: pd.DataFrame | None, source: str) -> dict[str, np.ndarray]:
    """Canonical cryoSPARC-named columns derived from a RELION particle table.

    ``optics`` (RELION 3.1) is joined per particle on rlnOpticsGroup; RELION 3.0 optics columns
    are read per particle.  Extra ``_field`` columns (written by cryoframe's exporter) restore
    canonical fields RELION has no label for, including ``uid``.
    """
    df = particles
    if optics is not None:
        opt = optics.set_index("rlnOpticsGroup")
        for c in opt.columns:
            if c not in df.columns:
                df = df.assign(**{c: df["rlnOpticsGroup"].map(opt[c]).to_numpy()})
    n = len(df)
    out: dict[str, np.ndarray] = {}

    def col(label: str) -> np.ndarray:
        """The column ``label`` (callers check that it exists)."""
        return df[label].to_numpy()

    if "rlnImageName" in df.columns:
        idx, paths = parse_image_names(df["rlnImageName"], source)
        out["blob/path"] = _as("blob/path", paths)
        out["blob/idx"] = idx.astype("<u4")
    psize = None
    if "rlnImagePixelSize" in df.columns:
        psize = col("rlnImagePixelSize").astype(np.float64)
    elif "rlnPixelSize" in df.columns:
        psize = col("rlnPixelSize").astype(np.float64)
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(df.columns):
        psize = col("rlnDetectorPixelSize").astype(np.float64) * 1e4 / col("rlnMagnification").astype(np.float64)
    if psize is not None:
        out["blob/psize_A"] = psize.astype("<f4")
    if "rlnImageSize" in df.columns:
        b = col("rlnImageSize").astype("<u4")
        out["blob/shape"] = np.stack([b, b], axis=1)

    simple = {s.relion[0]: s for s in field_dictionary().values() if len(s.relion) == 1 and s.conversion in ("identity", "rad_deg")}
    for label, spec in simple.items():
        if label not in df.columns:
            continue
        v = col(label)
        if spec.conversion == "rad_deg":
            v = np.deg2rad(v.astype(np.float64))
        out[spec.field] = _as(spec.field, v)
    for spec in field_dictionary().values():
        if spec.conversion == "vector" and all(lbl in df.columns for lbl in spec.relion):
            out[spec.field] = np.stack([col(lbl) for lbl in spec.relion], axis=1).astype(spec.dtype)
    if "rlnOpticsGroup" in df.columns:
        out["ctf/exp_group_id"] = col("rlnOpticsGroup").astype("<u4")

    # RELION's 2D classification writes rlnAngleRot = rlnAngleTilt = 0 beside the in-plane rlnAnglePsi:
    # such a file holds 2D alignments (as cryoSPARC's alignments2D), not 3D poses
    is3d = {"rlnAngleRot", "rlnAngleTilt"} <= set(df.columns) and not (
        n > 0 and "rlnAnglePsi" in df.columns and not np.any(col("rlnAngleRot")) and not np.any(col("rlnAngleTilt")))
    g = "alignments3D" if is3d else "alignments2D"
    has_align = is3d or "rlnAnglePsi" in df.columns or "rlnOriginXAngst" in df.columns or "rlnOriginX" in df.columns
    if is3d:
        psi = col("rlnAnglePsi") if "rlnAnglePsi" in df.columns else np.zeros(n)
        ang = np.stack([col("rlnAngleRot"), col("rlnAngleTilt"), psi], axis=1)
        out["alignments3D/pose"] = euler_to_rotvec(ang).astype("<f4")
    elif "rlnAnglePsi" in df.columns:
        out["alignments2D/pose"] = np.deg2rad(col("rlnAnglePsi").astype(np.float64)).astype("<f4")
    if "rlnOriginXAngst" in df.columns and "rlnOriginYAngst" in df.columns:
        if psize is None:
            raise FormatError(f"{source}: rlnOriginXAngst needs a pixel size (rlnImagePixelSize) to convert to pixels")
        sh = np.stack([col("rlnOriginXAngst"), col("rlnOriginYAngst")], axis=1).astype(np.float64) / psize[:, None]
        out[f"{g}/shift"] = sh.astype("<f4")
    elif "rlnOriginX" in df.columns and "rlnOriginY" in df.columns:
        out[f"{g}/shift"] = np.stack([col("rlnOriginX"), col("rlnOriginY")], axis=1).astype("<f4")
    if has_align and psize is not None:
        out[f"{g}/psize_A"] = psize.astype("<f4")
    if "rlnClassNumber" in df.columns:
        out[f"{g}/class"] = (col("rlnClassNumber").astype(np.int64) - 1).clip(0).astype("<u4")
    for fld, lbl in (("n_significant", "rlnNrOfSignificantSamples"), ("log_likelihood", "rlnLogLikeliContribution")):
        if lbl in df.columns:
            out[f"{g}/{fld}"] = col(lbl).astype("<f4")
    if "rlnMaxValueProbDistribution" in df.columns:
        out[f"{g}/class_posterior"] = col("rlnMaxValueProbDistribution").astype("<f4")
    if "rlnRandomSubset" in df.columns:
        out[f"{g}/split"] = (col("rlnRandomSubset").astype(np.int64) - 1).clip(0).astype("<u4")

    # extras written by cryoframe: `_field` or `_field.i` for vectors
    vec: dict[str, dict[int, np.ndarray]] = {}
    for c in df.columns:
        if not c.startswith(EXTRA_PREFIX):
            continue
        name = c[len(EXTRA_PREFIX) :]
        base, _, pos = name.rpartition(".")
        if base and pos.isdigit():
            vec.setdefault(base, {})[int(pos)] = df[c].to_numpy()
        else:
            out[name] = _extra_dtype(name, df[c].to_numpy())
    for name, parts in vec.items():
        out[name] = _extra_dtype(name, np.stack([parts[i] for i in sorted(parts)], axis=1))
    return out


def _extra_dtype(name: str, v: np.ndarray) -> np.ndarray:
    spec = field_spec(name)
    if spec is not None:
        return _as(name, v) if v.ndim == 1 else v.astype(spec.dtype)
    if v.dtype.kind == "O":
        return np.array([str(s).encode() for s in v], dtype="S")
    if v.dtype.kind == "f":
        return v.astype("<f4")
    if v.dtype.kind in "iu":
        return v.astype("<u8") if name == "uid" or (v.size and v.min() >= 0 and v.max() >= 2**32) else v.astype(
            "<u4" if (not v.size or v.min() >= 0) else "<i4"
        )
    return v


def _f32_short(v: np.ndarray) -> np.ndarray:
    """float32 values as the float64 whose shortest repr equals the float32's (tidy STAR text)."""
    v = np.asarray(v)
    if v.dtype == np.float32:
        return v.astype(str).astype(np.float64)
    return v


def canonical_to_relion(cols: dict[str, np.ndarray], n: int, *, extra_fields: bool = True,
                        prefer: str | None = None) -> dict[str, np.ndarray]:
    """RELION label -> values computed from canonical fields (optics labels included, per particle).

    With ``extra_fields`` the canonical fields RELION has no label for (and ``uid``) are added as
    ``_field`` columns (``_field.i`` per vector element) so ``.cs -> .star -> .cs`` is lossless.
    ``prefer="alignments2D"`` writes the 2D alignment (class, psi, origin) even when 3D poses exist
    (stores produced by 2D classification).
    """
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def has(f: str) -> bool:
        return f in cols

    def s(v: np.ndarray) -> np.ndarray:
        return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in v], dtype=object)

    if has("blob/path") and has("blob/idx"):
        paths = strip_path_prefix(cols["blob/path"])
        idx = cols["blob/idx"].astype(np.int64) + 1
        out["rlnImageName"] = np.array([f"{i:06d}@{p}" for i, p in zip(idx, paths, strict=True)], dtype=object)
        used |= {"blob/idx"}
        if not has_path_prefix(cols["blob/path"]):
            used.add("blob/path")  # else the '>' prefix travels in a `_blob/path` extra
    if has("location/micrograph_path"):
        out["rlnMicrographName"] = s(cols["location/micrograph_path"])
        used.add("location/micrograph_path")
    if has("location/micrograph_shape"):
        shp = cols["location/micrograph_shape"].astype(np.float64)
        if has("location/center_x_frac"):
            out["rlnCoordinateX"] = np.round(cols["location/center_x_frac"].astype(np.float64) * shp[:, 1], 6)
        if has("location/center_y_frac"):
            out["rlnCoordinateY"] = np.round(cols["location/center_y_frac"].astype(np.float64) * shp[:, 0], 6)
    for spec in field_dictionary().values():
        if not has(spec.field) or not spec.relion:
            continue
        if spec.conversion in ("identity", "rad_deg") and len(spec.relion) == 1:
            v = cols[spec.field]
            if v.dtype.kind == "S":
                v = s(v)
            elif spec.conversion == "rad_deg":
                v = np.round(np.rad2deg(v.astype(np.float64)), 6)
            else:
                v = _f32_short(v)
            out[spec.relion[0]] = v
            used.add(spec.field)
        elif spec.conversion == "vector":
            for k, lbl in enumerate(spec.relion):
                out[lbl] = _f32_short(cols[spec.field][:, k])
            used.add(spec.field)
    if has("blob/shape"):
        out["rlnImageSize"] = cols["blob/shape"][:, 0].astype(np.int64)
        out["rlnImageDimensionality"] = np.full(n, 2, dtype=np.int64)
    if has("ctf/exp_group_id"):
        used.add("ctf/exp_group_id")
        e = cols["ctf/exp_group_id"].astype(np.int64)
        out["rlnOpticsGroup"] = e + 1 if (e.size and e.min() == 0) else e

    g = None
    if prefer == "alignments2D" and has("alignments2D/pose"):
        g = "alignments2D"
        out["rlnAnglePsi"] = np.round(np.rad2deg(cols["alignments2D/pose"].astype(np.float64)), 6)
        used.add("alignments2D/pose")
    elif has("alignments3D/pose"):
        g = "alignments3D"
        ang = np.round(rotvec_to_euler(cols["alignments3D/pose"]), 6)
        out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = ang[:, 0], ang[:, 1], ang[:, 2]
        used.add("alignments3D/pose")
    elif has("alignments2D/pose"):
        g = "alignments2D"
        out["rlnAnglePsi"] = np.round(np.rad2deg(cols["alignments2D/pose"].astype(np.float64)), 6)
        used.add("alignments2D/pose")
    if g is None:
        g = "alignments3D" if any(k.startswith("alignments3D/") for k in cols) else "alignments2D"
    if has(f"{g}/shift"):
        ps = cols.get(f"{g}/psize_A", cols.get("blob/psize_A"))
        if ps is None:
            raise FormatError(f"cannot write rlnOriginXAngst: no {g}/psize_A or blob/psize_A to convert pixels to Å")
        sh = np.round(cols[f"{g}/shift"].astype(np.float64) * ps.astype(np.float64)[:, None], 6)
        out["rlnOriginXAngst"], out["rlnOriginYAngst"] = sh[:, 0], sh[:, 1]
        used.add(f"{g}/shift")
    if has(f"{g}/class"):
        out["rlnClassNumber"] = cols[f"{g}/class"].astype(np.int64) + 1
        used.add(f"{g}/class")
    for fld, lbl in (("n_significant", "rlnNrOfSignificantSamples"), ("log_likelihood", "rlnLogLikeliContribution")):
        if has(f"{g}/{fld}"):
            out[lbl] = _f32_short(cols[f"{g}/{fld}"])
            used.add(f"{g}/{fld}")
    if has(f"{g}/class_posterior") and cols[f"{g}/class_posterior"].ndim == 1:
        out["rlnMaxValueProbDistribution"] = _f32_short(cols[f"{g}/class_posterior"])
        used.add(f"{g}/class_posterior")
    if has("alignments3D/split"):
        out["rlnRandomSubset"] = cols["alignments3D/split"].astype(np.int64) + 1
        used.add("alignments3D/split")
    if extra_fields:
        for name, v in cols.items():
            if name in used:
                continue
            if name == "ctf/exp_group_id" and not (v.size and v.min() == 0):
                continue  # rlnOpticsGroup carries it exactly
            if name != "uid" and name in ("blob/shape",):
                continue
            if v.ndim == 1:
                out[EXTRA_PREFIX + name] = s(v) if v.dtype.kind == "S" else _f32_short(v)
            else:
                flat = v.reshape(n, -1)
                for k in range(flat.shape[1]):
                    out[f"{EXTRA_PREFIX}{name}.{k}"] = _f32_short(flat[:, k])
    return out


def split_optics(labels: dict[str, np.ndarray], n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group per-particle optics labels into a RELION 3.1 optics table; returns (optics, particles)."""
    import pandas as pd

    opt_names = [k for k in labels if k in optics_labels() and k != "rlnOpticsGroup"]
    part = {k: v for k, v in labels.items() if k not in optics_labels() or k == "rlnOpticsGroup"}
    group = labels.get("rlnOpticsGroup", np.ones(n, dtype=np.int64))
    key = pd.DataFrame({"g": group, **{k: labels[k] for k in opt_names}})
    uniq = key.drop_duplicates().reset_index(drop=True)
    if uniq["g"].duplicated().any():  # same group number, different optics: renumber
        uniq["new"] = np.arange(1, len(uniq) + 1)
    else:
        uniq["new"] = uniq["g"]
    merged = key.merge(uniq, how="left", on=list(key.columns))
    part["rlnOpticsGroup"] = merged["new"].to_numpy(dtype=np.int64)
    optics = pd.DataFrame({"rlnOpticsGroup": uniq["new"].to_numpy(dtype=np.int64)})
    optics["rlnOpticsGroupName"] = [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]]
    for k in opt_names:
        optics[k] = uniq[k].to_numpy()
    return optics.sort_values("rlnOpticsGroup").reset_index(drop=True), pd.DataFrame(part)
