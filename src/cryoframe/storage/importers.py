"""Import cryoSPARC ``.cs`` (+ passthroughs), RELION ``.star`` and bare ``.mrcs`` into a store."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cryoframe.errors import FormatError, InputError
from cryoframe.schema import arrow_field, numpy_to_arrow
from cryoframe.storage.convert import deterministic_uids, star_to_canonical
from cryoframe.storage.formats.cs import CsFile
from cryoframe.storage.formats.mrc import stack_header
from cryoframe.storage.formats.star import read_particles_star
from cryoframe.storage.images import import_images, resolve_base
from cryoframe.storage.store import IMAGE_ROW, ParticleStore, StoreWriter, prefetch

__all__ = ["import_cs", "import_file", "import_mrcs", "import_star"]

log = logging.getLogger(__name__)
BATCH = 250_000

PathLike = str | os.PathLike[str]


def _check_unique(uids: np.ndarray, source: str, field: str = "uid") -> None:
    s = np.sort(uids, kind="stable")
    dup = s[1:][s[1:] == s[:-1]]
    if dup.size:
        raise InputError(f"{source}: {dup.size} duplicate {field} value(s) (e.g. {int(dup[0])}); uids must be unique")


def _decode(a: np.ndarray) -> np.ndarray:
    return np.char.decode(a, "utf-8") if a.dtype.kind == "S" else a.astype(str)


class _Joined:
    """A main .cs plus passthroughs joined on uid, readable by row range in main-file order."""

    def __init__(self, main: CsFile, passthroughs: Sequence[CsFile]) -> None:
        self.main = main
        self.n = main.n
        self.checked = bool(passthroughs)  # else uids are checked while streaming (one read of the file)
        if passthroughs:
            uids = main.read(["uid"])["uid"]
            _check_unique(uids, str(main.path))
        self.owner: dict[str, tuple[CsFile, np.ndarray | None]] = {}
        self.fields: list[tuple[str, np.dtype, tuple[int, ...]]] = []
        for name, dt, shape in main.fields:
            self.owner[name] = (main, None)
            self.fields.append((name, dt, shape))
        for pt in passthroughs:
            pu = pt.read(["uid"])["uid"]
            _check_unique(pu, str(pt.path))
            order = np.argsort(pu, kind="stable")
            spu = pu[order]
            pos = np.searchsorted(spu, uids).clip(0, max(len(spu) - 1, 0))
            ok = spu[pos] == uids if len(spu) else np.zeros(len(uids), bool)
            if not ok.all():
                bad = int(uids[~ok][0])
                raise InputError(
                    f"{pt.path}: {int((~ok).sum())} of {len(uids)} uids of {main.path} are not in this passthrough "
                    f"(e.g. uid {bad}); a passthrough must describe the same particles"
                )
            take = order[pos]
            for name, dt, shape in pt.fields:
                if name not in self.owner:
                    self.owner[name] = (pt, take)
                    self.fields.append((name, dt, shape))

    def read(self, names: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        by_src: dict[int, list[str]] = {}
        for nm in names:
            by_src.setdefault(id(self.owner[nm][0]), []).append(nm)
        for nms in by_src.values():
            src, take = self.owner[nms[0]]
            if take is None:
                out.update(src.read(nms, start, stop))
            else:
                rows = take[start:stop]
                if src._npy:
                    block = src.records()[rows]
                    out.update({nm: np.array(block[nm]) for nm in nms})
                else:
                    out.update({nm: src.read([nm])[nm][rows] for nm in nms})
        return out


def _schema(fields: Sequence[tuple[str, np.dtype, tuple[int, ...]]], with_rows: bool) -> pa.Schema:
    fs = [arrow_field(n, dt, shape) for n, dt, shape in fields]
    if with_rows:
        fs.append(pa.field(IMAGE_ROW, pa.int64()))
    return pa.schema(fs)


def _table(schema: pa.Schema, cols: dict[str, np.ndarray], start: int, with_rows: bool) -> pa.Table:
    arrays = [numpy_to_arrow(cols[f.name]) for f in schema if f.name != IMAGE_ROW]
    if with_rows:
        m = len(arrays[0])
        arrays.append(pa.array(np.arange(start, start + m, dtype=np.int64)))
    return pa.Table.from_arrays(arrays, schema=schema)


def _common_psize(v: np.ndarray | None) -> float | None:
    if v is None or v.size == 0:
        return None
    u = np.unique(v)
    return float(u[0]) if len(u) == 1 and np.isfinite(u[0]) and u[0] > 0 else None


def import_cs(
    path: PathLike,
    out: PathLike,
    *,
    passthrough: Sequence[PathLike] = (),
    project_dir: PathLike | None = None,
    metadata_only: bool = False,
    overwrite: bool = False,
) -> ParticleStore:
    """Import a cryoSPARC ``.cs`` and its passthrough files (joined on uid) into a new store.

    Every field keeps its dtype.  Images are read from ``blob/path`` (relative to
    ``project_dir``; default: the .cs file's job directory's parent, then the current directory)
    at ``blob/idx`` and streamed into Zarr unless ``metadata_only``.
    """
    path = Path(path)
    main = CsFile(path)
    pts = [CsFile(p) for p in passthrough]
    j = _Joined(main, pts)
    names = [f[0] for f in j.fields]
    want_images = not metadata_only
    if want_images and not {"blob/path", "blob/idx"} <= set(names):
        raise FormatError(f"{path}: no blob/path and blob/idx fields to find images; use --metadata-only")
    schema = _schema(j.fields, want_images)
    params = {"source": str(path), "passthrough": [str(p) for p in passthrough],
              "project_dir": str(project_dir) if project_dir else None, "metadata_only": metadata_only}
    with StoreWriter(out, op="import", params=params, inputs=[path, *passthrough], overwrite=overwrite) as w:
        box = None
        if want_images and j.n:
            if project_dir is not None:
                cands = [Path(project_dir)]
            else:
                cands = [path.absolute().parent.parent, path.absolute().parent, Path.cwd()]
            first = _decode(j.read(["blob/path"], 0, 1)["blob/path"])[0]
            base = resolve_base(first, cands, str(path), "blob/path")

            def blobs(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
                d = j.read(["blob/path", "blob/idx"], a, b)
                return _decode(d["blob/path"]), d["blob/idx"]

            exp = None
            if "blob/shape" in names:
                shp = j.read(["blob/shape"], 0, 1)["blob/shape"]
                exp = int(shp[0][-1]) if len(shp) else None
            box, _ = import_images(w, j.n, blobs, base, str(path), "blob/path", expected_box=exp)
        def batch(a: int) -> pa.Table:
            return _table(schema, j.read(names, a, min(j.n, a + BATCH)), a, want_images)

        seen = []
        for tbl in prefetch(batch, range(0, j.n, BATCH)):
            if not j.checked:
                seen.append(tbl.column("uid").to_numpy())
            w.write_metadata(tbl)
        if seen:
            _check_unique(np.concatenate(seen), str(path))
        if j.n == 0:
            w.write_metadata(schema.empty_table())
        psize = None
        for f in ("blob/psize_A", "alignments3D/psize_A", "alignments2D/psize_A"):
            if f in names and j.n:
                psize = _common_psize(j.read([f], 0, min(j.n, BATCH))[f])
                if psize:
                    break
        return w.commit(psize_A=psize, box_px=box, source={"format": "cs", "path": str(path.absolute())})


def import_star(
    path: PathLike,
    out: PathLike,
    *,
    project_dir: PathLike | None = None,
    metadata_only: bool = False,
    overwrite: bool = False,
) -> ParticleStore:
    """Import a RELION 3.0/3.1 particle ``.star`` (images from the ``.mrcs`` its rlnImageName names).

    Stores canonical cryoSPARC-named fields converted from the RELION labels *and* every RELION
    column verbatim (so ``.star -> store -> .star`` is exact); the optics table is kept as
    ``optics.parquet``.  uids come from an ``_uid`` column written by cryoframe, else a
    deterministic hash of rlnImageName (or micrograph + coordinates).
    """
    path = Path(path)
    sp = read_particles_star(path)
    df = sp.particles
    canon = star_to_canonical(df, sp.optics, str(path))
    n = len(df)
    if "uid" in canon:
        uids = canon.pop("uid").astype(np.uint64)
    else:
        if "rlnImageName" in df.columns:
            key = df["rlnImageName"].astype(str)
        elif "rlnMicrographName" in df.columns:
            key = df["rlnMicrographName"].astype(str) + ":" + df["rlnCoordinateX"].astype(str) + "," + df["rlnCoordinateY"].astype(str)
        else:
            key = pd.Series([f"{path.name}:{i}" for i in range(n)])
        uids = deterministic_uids(key)
    _check_unique(uids, str(path), "uid")
    verbatim = [c for c in df.columns if not c.startswith("_")]
    cols: dict[str, np.ndarray] = {"uid": uids, **canon}
    fields = [(k, v.dtype, v.shape[1:]) for k, v in cols.items()]
    vfields = []
    for c in verbatim:
        v = df[c].to_numpy()
        if v.dtype.kind == "O":
            v = v.astype(str)
        cols[c] = v
        vfields.append((c, v.dtype, ()))
    want_images = not metadata_only
    if want_images and "rlnImageName" not in df.columns:
        raise FormatError(f"{path}: no rlnImageName column to find images; use --metadata-only")
    schema = _schema(fields + vfields, want_images)
    params = {"source": str(path), "project_dir": str(project_dir) if project_dir else None,
              "metadata_only": metadata_only}
    with StoreWriter(out, op="import", params=params, inputs=[path], overwrite=overwrite) as w:
        box = None
        if want_images:
            paths = np.array([str(p) for p in _decode(canon["blob/path"])], dtype=object)
            idx = canon["blob/idx"]
            cands = [Path(project_dir)] if project_dir is not None else [
                path.absolute().parent, path.absolute().parent.parent, path.absolute().parent.parent.parent, Path.cwd()]
            base = resolve_base(paths[0], cands, str(path), "rlnImageName")
            exp = int(canon["blob/shape"][0, 0]) if "blob/shape" in canon else None
            box, _ = import_images(w, n, lambda a, b: (paths[a:b], idx[a:b]), base, str(path), "rlnImageName",
                                   expected_box=exp)
        for a in range(0, n, BATCH):
            b = min(n, a + BATCH)
            w.write_metadata(_table(schema, {k: v[a:b] for k, v in cols.items()}, a, want_images))
        if sp.optics is not None:
            w.write_optics(pa.Table.from_pandas(sp.optics, preserve_index=False))
        psize = _common_psize(canon.get("blob/psize_A"))
        return w.commit(psize_A=psize, box_px=box,
                        source={"format": "star", "relion_version": sp.version, "block": sp.block,
                                "path": str(path.absolute()), "columns": list(df.columns)})


def import_mrcs(path: PathLike, out: PathLike, *, psize_A: float | None = None, overwrite: bool = False) -> ParticleStore:
    """Import a bare ``.mrcs`` stack: one particle per image, uids hashed from ``NNNNNN@name``."""
    path = Path(path)
    nz, ny, nx, vs = stack_header(path)
    if ny != nx:
        raise FormatError(f"{path}: images are {ny}x{nx}; only square boxes are supported")
    ps = psize_A if psize_A else (vs if vs > 0 else None)
    names = pd.Series([f"{i + 1:06d}@{path.name}" for i in range(nz)])
    cols: dict[str, np.ndarray] = {
        "uid": deterministic_uids(names),
        "blob/path": np.array([path.name.encode()] * nz, dtype="S"),
        "blob/idx": np.arange(nz, dtype="<u4"),
        "blob/shape": np.tile(np.array([ny, nx], dtype="<u4"), (nz, 1)),
    }
    if ps:
        cols["blob/psize_A"] = np.full(nz, ps, dtype="<f4")
    fields = [(k, v.dtype, v.shape[1:]) for k, v in cols.items()]
    schema = _schema(fields, True)
    with StoreWriter(out, op="import", params={"source": str(path), "psize_A": psize_A}, inputs=[path],
                     overwrite=overwrite) as w:
        idx = cols["blob/idx"]
        pth = np.array([path.name] * nz, dtype=object)
        import_images(w, nz, lambda a, b: (pth[a:b], idx[a:b]), path.absolute().parent, str(path), "image")
        for a in range(0, nz, BATCH):
            b = min(nz, a + BATCH)
            w.write_metadata(_table(schema, {k: v[a:b] for k, v in cols.items()}, a, True))
        return w.commit(psize_A=ps, source={"format": "mrcs", "path": str(path.absolute())})


def import_file(path: PathLike, out: PathLike, **kwargs: object) -> ParticleStore:
    """Dispatch on the file suffix: ``.cs``, ``.star``, ``.mrcs``/``.mrc``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".cs":
        return import_cs(path, out, **kwargs)  # type: ignore[arg-type]
    if kwargs.get("passthrough"):
        raise InputError("--passthrough applies to .cs imports only")
    kwargs.pop("passthrough", None)
    if suffix == ".star":
        kwargs.pop("psize_A", None)
        return import_star(path, out, **kwargs)  # type: ignore[arg-type]
    if suffix in (".mrcs", ".mrc"):
        kwargs.pop("project_dir", None)
        kwargs.pop("metadata_only", None)
        return import_mrcs(path, out, **kwargs)  # type: ignore[arg-type]
    raise InputError(f"{path}: unknown file type {suffix!r}; expected .cs, .star or .mrcs")
