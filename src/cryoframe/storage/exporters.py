"""Export a store to cryoSPARC ``.cs`` or RELION 3.1 ``.star`` (optionally with ``.mrcs`` images).

``.cs``: the canonical fields with their original names and dtypes (``uid`` first), streamed.
``.star``: RELION 3.1 ``data_optics`` + ``data_particles``; labels come from verbatim RELION
columns where the store has them (exact ``.star`` round trips) and are otherwise converted from
canonical fields (see :mod:`cryoframe.storage.convert`); canonical fields RELION has no label for
travel as ``_field`` columns (off with ``extra_fields=False``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cryoframe.errors import InputError, StoreError
from cryoframe.schema import (
    arrow_to_numpy,
    field_spec,
    is_canonical,
    is_internal,
    numpy_dtype_of,
    optics_labels,
)
from cryoframe.storage.atomic import check_output
from cryoframe.storage.convert import canonical_to_relion, split_optics
from cryoframe.storage.formats.cs import write_cs
from cryoframe.storage.formats.mrc import write_stack
from cryoframe.storage.formats.star import write_particles_star
from cryoframe.storage.store import ParticleStore

__all__ = ["export", "export_cs", "export_star"]

PathLike = str | os.PathLike[str]
RELION30_ONLY = ("rlnOriginX", "rlnOriginY", "rlnMagnification", "rlnDetectorPixelSize")


def _write_images(store: ParticleStore, stack: Path) -> None:
    if not store.has_images:
        raise InputError(f"{store.path}: store has no images to export (imported with --metadata-only?)")
    z = store.image_array()
    step = max(1, z.chunks[0])
    blocks = (store.read_images(a, min(store.n, a + step)) for a in range(0, store.n, step))
    write_stack(stack, store.n, int(z.shape[1]), blocks, store.psize_A)


def primary_alignment(store: ParticleStore) -> str | None:
    """``alignments2D`` when the newest alignment-producing step was a 2D classification."""
    for step in reversed(store.lineage):
        if step["op"] == "class2d":
            return "alignments2D"
        if step["op"] in ("class3d", "refine3d", "abinitio"):
            return "alignments3D"
    return None


def export_cs(store: ParticleStore, out: PathLike, *, images: bool = False, overwrite: bool = False) -> Path:
    """Write ``store`` as a NumPy-format ``.cs`` (loads with cryosparc-tools ``Dataset.load``).

    With ``images``, a ``<out stem>_particles.mrcs`` stack is written beside it and
    ``blob/path`` (relative to the .cs directory) / ``blob/idx`` / ``blob/shape`` point into it.
    """
    out = check_output(out, overwrite)
    schema = store.schema
    descr: list[tuple[str, np.dtype, tuple[int, ...]]] = []
    for f in schema:
        if not is_canonical(f.name):
            continue
        dt, shape = numpy_dtype_of(f)
        spec = field_spec(f.name)
        if dt.kind in "UO" or (dt.kind == "S" and dt.itemsize == 0):
            dt = np.dtype("S1")
        if f.name == "uid":
            dt = np.dtype("<u8")
        elif spec is not None and dt == np.dtype("<f8") and spec.dtype[1] in "iuf":
            dt = np.dtype(spec.dtype)  # float64 columns from STAR text go back to cryoSPARC's float32
        descr.append((f.name, dt, shape))
    if not any(d[0] == "uid" for d in descr):
        raise StoreError(f"{store.path}: no uid column")
    descr.sort(key=lambda d: d[0] != "uid")
    stack = out.with_name(out.stem + "_particles.mrcs")
    if images:
        box = int(store.image_array().shape[1])
        extra = [("blob/path", np.dtype(f"S{len(stack.name)}"), ()), ("blob/idx", np.dtype("<u4"), ()),
                 ("blob/shape", np.dtype("<u4"), (2,))]
        names = {d[0] for d in descr}
        descr = [d if d[0] not in {"blob/path", "blob/idx", "blob/shape"} else next(e for e in extra if e[0] == d[0])
                 for d in descr] + [e for e in extra if e[0] not in names]
        if "blob/psize_A" not in names and store.psize_A:
            descr.append(("blob/psize_A", np.dtype("<f4"), ()))
    # string widths: grow when values are longer than the recorded width
    read_cols = [d[0] for d in descr if d[0] in schema.names]

    def batches() -> Iterator[dict[str, np.ndarray]]:
        start = 0
        for t in store.iter_batches(read_cols):
            m = t.num_rows
            b: dict[str, np.ndarray] = {}
            for name, dt, shape in descr:
                if images and name == "blob/path":
                    b[name] = np.full(m, stack.name.encode(), dtype=dt)
                elif images and name == "blob/idx":
                    b[name] = np.arange(start, start + m, dtype="<u4")
                elif images and name == "blob/shape":
                    b[name] = np.tile(np.array([box, box], dtype="<u4"), (m, 1))
                elif name not in t.column_names:
                    b[name] = np.full(m, store.psize_A or 0, dtype=dt)
                else:
                    v = arrow_to_numpy(t.column(name), dt if dt.kind != "S" else np.dtype("S"), shape)
                    if dt.kind == "S" and v.dtype.itemsize > dt.itemsize:
                        raise StoreError(f"{name}: value longer than its recorded width {dt.itemsize}")
                    b[name] = v.astype(dt)
            start += m
            yield b

    if images:
        _write_images(store, stack)
    write_cs(out, store.n, descr, batches())
    return out


def export_star(
    store: ParticleStore,
    out: PathLike,
    *,
    images: bool = False,
    extra_fields: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``store`` as a RELION 3.1 particle ``.star`` (``data_optics`` + ``data_particles``).

    With ``images``, ``<out stem>.mrcs`` is written beside it and rlnImageName points into it.
    """
    out = check_output(out, overwrite)
    t = store.table()
    n = t.num_rows
    canon: dict[str, np.ndarray] = {}
    verbatim: list[str] = []
    for f in t.schema:
        if is_internal(f.name):
            continue
        if is_canonical(f.name):
            dt, shape = numpy_dtype_of(f)
            canon[f.name] = arrow_to_numpy(t.column(f.name), dt, shape)
        else:
            verbatim.append(f.name)
    labels = canonical_to_relion(canon, n, extra_fields=extra_fields, prefer=primary_alignment(store))
    stack = out.with_name(out.stem + ".mrcs")
    if images:
        labels["rlnImageName"] = np.array([f"{i + 1:06d}@{stack.name}" for i in range(n)], dtype=object)
        verbatim = [c for c in verbatim if c != "rlnImageName"]
    vals: dict[str, np.ndarray] = {}
    for c in verbatim:
        if c in RELION30_ONLY:
            continue
        col = t.column(c).to_numpy(zero_copy_only=False)
        vals[c] = col
    ordered = {**vals, **{k: v for k, v in labels.items() if k not in vals}}
    src_cols = (store.manifest.source or {}).get("columns") or []
    if src_cols:  # the column order of the imported .star first
        rank = {c: i for i, c in enumerate(src_cols)}
        ordered = dict(sorted(ordered.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    stored_optics = store.optics()
    if stored_optics is not None and "rlnOpticsGroup" in vals:
        optics = stored_optics.to_pandas()
        part = pd.DataFrame({k: v for k, v in ordered.items() if k not in optics_labels() or k == "rlnOpticsGroup"})
    else:
        optics, part = split_optics(ordered, n)
    if "rlnImageName" not in part.columns and not {"rlnCoordinateX", "rlnCoordinateY"} <= set(part.columns):
        raise StoreError(f"{store.path}: no blob/path+blob/idx (or rlnImageName) to write rlnImageName; "
                         "export with --images to write a new stack")
    if images:
        _write_images(store, stack)
    write_particles_star(out, part, optics)
    return out


def export(store: ParticleStore, out: str | os.PathLike[str], *, format: str | None = None, images: bool = False,
           extra_fields: bool = True, overwrite: bool = False) -> Path:
    """Export ``store`` to ``.cs`` or ``.star`` (``format`` defaults to ``out``'s suffix): what
    ``cryoframe export`` and every export button write."""
    fmt = (format or Path(out).suffix.lstrip(".")).lower()
    if fmt == "cs":
        return export_cs(store, out, images=images, overwrite=overwrite)
    if fmt == "star":
        return export_star(store, out, images=images, extra_fields=extra_fields, overwrite=overwrite)
    raise InputError(f"unknown export format {fmt!r}: expected cs or star")
