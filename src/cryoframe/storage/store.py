"""ParticleStore: one directory per particle set (Parquet metadata + Zarr v3 images + manifest).

Layout (see shared design/architecture)::

    STORE/manifest.json     format, counts, fields, images reference, lineage
    STORE/metadata/         part-NNNNN.parquet, one row per particle, key ``uid`` (uint64)
    STORE/images.zarr       (N, box, box) float32, chunked along N (4-16 MiB chunks)
    STORE/optics.parquet    optional RELION optics groups
    STORE/extras/           job products

Stores are immutable: :class:`StoreWriter` builds a store under a hidden temporary name next to
the target and renames it into place on :meth:`StoreWriter.commit`; any exception removes the
temporary directory, so a failed or killed operation never leaves a partial store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import DTypeLike

from cryoframe.errors import InputError, StoreError
from cryoframe.schema import is_internal, numpy_dtype_of
from cryoframe.schema.types import numeric_values
from cryoframe.storage.atomic import check_output, replace_into, temp_path, write_json_atomic
from cryoframe.storage.checks import bad_particles, nonfinite_images
from cryoframe.storage.manifest import (
    FORMAT_VERSION,
    Manifest,
    file_hash,
    lineage_step,
    read_manifest,
)
from cryoframe.storage.parquet import footer as _footer
from cryoframe.storage.parquet import parquet_kwargs as _parquet_kwargs

__all__ = ["IMAGE_ROW", "ParticleStore", "StoreWriter", "check_finite", "image_chunk_rows", "materialize", "prefetch"]

_log = logging.getLogger(__name__)

IMAGE_ROW = "_image_row"
"""Internal column: row of this particle in the (possibly shared) image array."""

ROW_GROUP = 250_000
ROWS_PER_FILE = 500_000
CHUNK_BYTES = 8 << 20


def _read_parquet(path: str | os.PathLike[str], columns: Sequence[str] | None) -> pa.Table:
    """One Parquet file (optionally only ``columns``).  ParquetFile.read, not pq.read_table: the
    latter imports pyarrow.dataset (about 0.25 s of every job's start-up)."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


def image_chunk_rows(box: int, itemsize: int = 4, target: int = CHUNK_BYTES) -> int:
    """Particles per Zarr chunk so that one chunk is about ``target`` bytes (4-16 MiB)."""
    return max(1, int(target // (box * box * itemsize)))


def prefetch(func: Any, items: Any, depth: int = 2) -> Iterator[Any]:
    """``map(func, items)`` computed ``depth`` items ahead in a worker thread (ordered, bounded)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Any] = deque()
        for it in items:
            pending.append(pool.submit(func, it))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class StoreWriter:
    """Build a new store atomically.  Use as a context manager, then :meth:`commit`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        op: str,
        params: dict[str, Any] | None = None,
        inputs: Sequence[str | os.PathLike[str] | ParticleStore] = (),
        parent: ParticleStore | None = None,
        overwrite: bool = False,
    ) -> None:
        self.final = check_output(path, overwrite)
        self.overwrite = overwrite
        self.tmp = temp_path(self.final)
        (self.tmp / "metadata").mkdir(parents=True)
        (self.tmp / "extras").mkdir()
        self.parent = parent
        self.lineage: list[dict[str, Any]] = list(parent.manifest.lineage) if parent else []
        self._step = (op, params or {}, list(inputs))
        self._writer: pq.ParquetWriter | None = None
        self._pool: Any = None
        self._futures: list[Any] = []
        self._inflight: list[tuple[Any, list[Any]]] = []
        self._file_rows = 0
        self._nfiles = 0
        self.schema: pa.Schema | None = None
        self.n = 0
        self.images: dict[str, Any] | None = None
        self.info: dict[str, Any] = {}
        self._done = False
        from concurrent.futures import ThreadPoolExecutor

        # input files are hashed in the background while the operation runs (hashlib drops the GIL)
        self._hasher = ThreadPoolExecutor(max_workers=1)
        self._hashes = {
            str(x): self._hasher.submit(file_hash, x) for x in self._step[2] if not isinstance(x, ParticleStore)
        }

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or not self._done:
            self.abort()

    @property
    def closed(self) -> bool:
        """True once committed or aborted."""
        return self._done

    def close(self) -> None:
        """Abort unless already committed or aborted (for ``finally:`` clauses)."""
        if not self._done:
            self.abort()

    def abort(self) -> None:
        """Stop background work and remove the temporary store.  Errors of the background Parquet
        writes are logged (they are usually the cause of the abort, or a symptom of it)."""
        self._hasher.shutdown(wait=False, cancel_futures=True)
        try:
            self._close_file()
        except Exception as exc:  # noqa: BLE001 - aborting anyway: report, then clean up
            _log.warning("%s: closing a Parquet file failed during abort: %r", self.tmp, exc)
        while self._inflight:
            try:
                self._drain(self._inflight.pop(0))
            except Exception as exc:  # noqa: BLE001
                _log.warning("%s: a background Parquet write failed during abort: %r", self.tmp, exc)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    # -- metadata --------------------------------------------------------------------------
    def write_metadata(self, table: pa.Table) -> None:
        """Append rows; the first call fixes the schema (field metadata included).

        Files of ``ROWS_PER_FILE`` rows are encoded by background threads, two files at a time
        (Parquet encoding releases the GIL), so conversion of the next batch overlaps writing.
        """
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            try:
                table = pa.Table.from_arrays([c.cast(f.type) for c, f in zip(table.columns, self.schema, strict=True)],
                                             schema=self.schema)
            except (pa.ArrowInvalid, ValueError) as exc:
                raise StoreError(f"metadata batch does not match the store schema: {exc}") from exc
        start = 0
        while start < table.num_rows:
            writer = self._open_file() if self._writer is None else self._writer
            take = min(table.num_rows - start, ROWS_PER_FILE - self._file_rows)
            chunk = table.slice(start, take)
            self._futures.append(self._pool.submit(writer.write_table, chunk, row_group_size=ROW_GROUP))
            self._file_rows += take
            self.n += take
            start += take
            if self._file_rows >= ROWS_PER_FILE:
                self._close_file()

    def _open_file(self) -> pq.ParquetWriter:
        from concurrent.futures import ThreadPoolExecutor

        while len(self._inflight) >= 2:  # at most two files encoding at once
            self._drain(self._inflight.pop(0))
        name = self.tmp / "metadata" / f"part-{self._nfiles:05d}.parquet"
        self._writer = pq.ParquetWriter(name, self.schema, **_parquet_kwargs(self.schema))
        self._pool = ThreadPoolExecutor(max_workers=1)  # one thread per file keeps its batches ordered
        self._futures = []
        self._nfiles += 1
        self._file_rows = 0
        return self._writer

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._futures.append(self._pool.submit(self._writer.close))
        self._inflight.append((self._pool, self._futures))
        self._writer = None

    @staticmethod
    def _drain(item: tuple[Any, list[Any]]) -> None:
        pool, futures = item
        try:
            for f in futures:
                f.result()
        finally:
            pool.shutdown(wait=True)

    def _finish_files(self) -> None:
        self._close_file()
        while self._inflight:
            self._drain(self._inflight.pop(0))

    # -- images ----------------------------------------------------------------------------
    def create_images(self, n: int, box: int, dtype: str = "float32") -> Any:
        """Create the (n, box, box) Zarr v3 array, chunked along particles; returns it for writing."""
        import zarr
        from zarr.codecs import BloscCodec

        rows = image_chunk_rows(box, np.dtype(dtype).itemsize)
        arr = zarr.create_array(
            store=str(self.tmp / "images.zarr"),
            shape=(n, box, box),
            chunks=(min(rows, max(n, 1)), box, box),
            dtype=dtype,
            compressors=BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
            fill_value=0,
        )
        self.images = {"path": "images.zarr", "shape": [n, box, box], "dtype": dtype, "owner": True}
        return arr

    def link_images(self, source: ParticleStore) -> None:
        """Reference ``source``'s image array instead of copying it."""
        ref = source.manifest.images
        src = source.images_path()
        if ref is None or src is None:
            return
        rel = os.path.relpath(src, self.final.parent)
        self.images = {
            "path": os.path.join("..", rel),
            "abs_path": str(src),
            "shape": ref["shape"],
            "dtype": ref["dtype"],
            "owner": False,
        }

    def write_optics(self, table: pa.Table) -> None:
        pq.write_table(table, self.tmp / "optics.parquet", compression="zstd")

    def extras_dir(self) -> Path:
        return self.tmp / "extras"

    # -- commit ----------------------------------------------------------------------------
    def derive(self, parent: ParticleStore, **info: Any) -> ParticleStore:
        """Commit a store derived from ``parent`` (a selection or annotation of its particles): link
        ``parent``'s images, copy its optics table, and keep its pixel size (Å/px), box (px) and
        import source unless ``info`` overrides them.  The metadata must already be written."""
        self.link_images(parent)
        opt = parent.optics()
        if opt is not None:
            self.write_optics(opt)
        base = {"psize_A": parent.psize_A, "box_px": parent.box, "source": parent.manifest.source}
        return self.commit(**{**base, **info})

    def commit(self, **info: Any) -> ParticleStore:
        """Finish files, write the manifest, rename into place; returns the opened store."""
        self._finish_files()
        if self.schema is None:
            raise StoreError("no metadata was written")
        if self._nfiles == 0:  # zero rows: still one (empty) Parquet file carrying the schema
            pq.write_table(self.schema.empty_table(), self.tmp / "metadata" / "part-00000.parquet",
                           **_parquet_kwargs(self.schema))
            self._nfiles = 1
        op, params, inputs = self._step
        ins = []
        for x in inputs:
            if isinstance(x, ParticleStore):
                ins.append({"path": str(x.path), "hash": x.content_hash})
            else:
                ins.append({"path": str(Path(x).absolute()), "hash": self._hashes[str(x)].result()})
        self._hasher.shutdown()
        h = hashlib.blake2b(digest_size=16)
        for f in sorted((self.tmp / "metadata").glob("*.parquet")) + sorted(self.tmp.glob("optics.parquet")):
            h.update(_footer(f))
        h.update(repr(self.images).encode())
        from cryoframe import __version__

        fields = []
        for f in self.schema:
            dt, shape = numpy_dtype_of(f)
            fields.append({"name": f.name, "numpy_dtype": dt.str, "shape": list(shape), "arrow_type": str(f.type)})
        box = self.images["shape"][1] if self.images else info.pop("box_px", None)
        info.pop("box_px", None)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            cryoframe_version=__version__,
            n_particles=self.n,
            box_px=box,
            psize_A=info.pop("psize_A", None),
            fields=fields,
            images=self.images,
            optics="optics.parquet" if (self.tmp / "optics.parquet").exists() else None,
            content_hash=f"blake2b:{h.hexdigest()}",
            source=info.pop("source", None),
            lineage=self.lineage + [lineage_step(op, params, ins)],
            extras=info,
        )
        write_json_atomic(self.tmp / "manifest.json", manifest.to_dict())
        if self.final.exists() and not self.overwrite:
            self.abort()
            raise StoreError(f"{self.final}: already exists")
        replace_into(self.tmp, self.final)
        self._done = True
        return ParticleStore(self.final)


class ParticleStore:
    """An immutable particle set on disk.  ``ParticleStore(path)`` opens and validates it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self.manifest = Manifest.from_dict(read_manifest(self.path), where=str(self.path / "manifest.json"))
        self.view: Any = None  # a storage.view.ViewReader when this store is a view of a parent
        self._image_rows: np.ndarray | None = None
        if "view" in self.manifest:
            from cryoframe.storage.view import open_view

            self._files: list[Path] = []
            self.view = open_view(self)
            return
        self._files = sorted((self.path / "metadata").glob("*.parquet"))
        if not self._files:
            raise StoreError(f"{self.path}: metadata/ holds no Parquet files")

    open = classmethod(lambda cls, path: cls(path))

    def __repr__(self) -> str:
        return f"ParticleStore({str(self.path)!r}, n={self.n}, box={self.box})"

    # -- simple properties -----------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.manifest.n_particles)

    def __len__(self) -> int:
        return self.n

    @property
    def box(self) -> int | None:
        return self.manifest.box_px

    @property
    def psize_A(self) -> float | None:
        """Image pixel size in Å/px (None when unknown)."""
        return self.manifest.psize_A

    def pixel_size(self, default: float | None = None) -> float:
        """The particles' one pixel size (Å/px): the manifest's, else the single value of ``blob/psize_A``,
        else ``default``.  Raises :class:`InputError` when the particles have several (optics groups of
        different pixel sizes: a job run over them would use one for all) or none is known and no default."""
        if self.psize_A:
            return float(self.psize_A)
        if "blob/psize_A" in self.fields:
            v = numeric_values(self.table(["blob/psize_A"]).column(0)).astype(np.float64)
            u = np.unique(np.round(v[np.isfinite(v) & (v > 0)], 4))
            if len(u) > 1:
                listed = ", ".join(f"{x:g}" for x in u[:4]) + (", ..." if len(u) > 4 else "")
                raise InputError(f"{self.path}: particles have mixed pixel sizes (blob/psize_A {listed} Å); run "
                                 f"each pixel size separately, e.g. the particles of {u[0]:g} Å/px with `cryoframe "
                                 f"query {self.path} --where 'abs(`blob/psize_A` - {u[0]:g}) < 0.0001'`")
            if len(u) == 1:
                return float(u[0])
        if default is not None:
            return float(default)
        raise InputError(f"{self.path}: unknown pixel size (no psize_A in the manifest and no blob/psize_A)")

    @property
    def content_hash(self) -> str:
        return self.manifest.content_hash

    @property
    def lineage(self) -> list[dict[str, Any]]:
        return self.manifest.lineage

    @property
    def metadata_files(self) -> list[Path]:
        """The store's Parquet metadata files, in store order."""
        return list(self._files)

    @property
    def schema(self) -> pa.Schema:
        if self.view is not None:
            return self.view.schema
        return pq.read_schema(self._files[0])

    @property
    def fields(self) -> list[str]:
        """User-visible columns (cryoSPARC fields, verbatim RELION labels); no internal ones."""
        return [f["name"] for f in self.manifest["fields"] if not is_internal(f["name"])]

    @property
    def has_images(self) -> bool:
        return self.manifest.get("images") is not None

    def extras_dir(self) -> Path:
        return self.path / "extras"

    # -- metadata --------------------------------------------------------------------------
    def check_columns(self, columns: Sequence[str] | None) -> list[str] | None:
        if columns is None:
            return None
        have = {f["name"] for f in self.manifest["fields"]}
        missing = [c for c in columns if c not in have]
        if missing:
            raise StoreError(f"{self.path}: no field(s) {', '.join(missing)}; fields are: {', '.join(self.fields)}")
        return list(dict.fromkeys(columns))

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Read metadata (optionally only ``columns``) as one Arrow table, in store order."""
        cols = self.check_columns(columns)
        if self.view is not None:
            return self.view.table(cols)
        return pa.concat_tables([_read_parquet(f, cols) for f in self._files])

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 262_144) -> Iterator[pa.Table]:
        """Stream metadata in store order, ``batch_size`` rows at a time (bounded memory)."""
        cols = self.check_columns(columns)
        if self.view is not None:
            yield from self.view.iter_batches(cols, batch_size)
            return
        for f in self._files:
            pf = pq.ParquetFile(f)
            for b in pf.iter_batches(batch_size=batch_size, columns=cols):
                yield pa.Table.from_batches([b])

    @overload
    def read_numeric(self, name: str, dtype: None = None) -> np.ndarray | None: ...
    @overload
    def read_numeric(self, name: str, dtype: DTypeLike) -> np.ndarray: ...
    def read_numeric(self, name: str, dtype: DTypeLike | None = None) -> np.ndarray | None:
        """One scalar column as one NumPy array, filled batch by batch (never a second full-length copy:
        combining Parquet chunks would hold two, and Arrow's allocator keeps the freed one).

        ``dtype`` None: the column's own numeric dtype, or None when it is not numeric or has missing
        values.  A float ``dtype``: every chunk cast to it, missing values as NaN."""
        import pyarrow.compute as pc

        out = None if dtype is None else np.empty(self.n, dtype=dtype)
        pos = 0
        for t in self.iter_batches([name], batch_size=1 << 20):
            for ch in t.column(0).chunks:  # numeric chunks without nulls: straight into ``out`` (no temporary)
                plain = ch.null_count == 0 and (pa.types.is_floating(ch.type) or pa.types.is_integer(ch.type))
                if not plain and dtype is None:
                    return None
                v = numeric_values(ch) if plain else \
                    pc.cast(ch, pa.from_numpy_dtype(np.dtype(dtype))).to_numpy(zero_copy_only=False)
                if out is None:
                    out = np.empty(self.n, dtype=v.dtype)
                out[pos : pos + len(v)] = v
                pos += len(v)
        if pos != self.n:
            raise StoreError(f"{self.path}: {name} has {pos} values for {self.n} particles")
        return out  # None only for a store without rows and no dtype asked for

    def metadata(self, columns: Sequence[str] | None = None, *, include_internal: bool = False) -> Any:
        """Lazy dask dataframe of the metadata with pyarrow dtypes (one partition per row group)."""
        import dask.dataframe as dd

        cols = self.check_columns(columns)
        if cols is None and not include_internal:
            cols = [f["name"] for f in self.manifest["fields"] if not is_internal(f["name"])]
        if self.view is not None:
            return self.view.metadata(cols if cols is not None else [f["name"] for f in self.manifest["fields"]])
        return dd.read_parquet(
            [str(f) for f in self._files],
            columns=cols,
            dtype_backend="pyarrow",
            split_row_groups="adaptive",
            index=False,
        )

    def optics(self) -> pa.Table | None:
        if self.view is not None:
            return self.view.root.optics()
        if not self.manifest.get("optics"):
            return None
        return _read_parquet(self.path / self.manifest["optics"], None)

    # -- images ----------------------------------------------------------------------------
    def images_path(self) -> Path | None:
        if self.view is not None:
            root_path: Path | None = self.view.root.images_path()
            return root_path
        ref = self.manifest.images
        if not ref:
            return None
        p = (self.path / str(ref["path"])).resolve()
        if not p.exists() and ref.get("abs_path"):
            p = Path(ref["abs_path"])
        if not p.exists():
            raise StoreError(f"{self.path}: image array {ref['path']} not found (was the parent store moved or deleted?)")
        return p

    def image_array(self) -> Any:
        """The raw zarr.Array this store's images live in (possibly a parent's)."""
        import zarr

        p = self.images_path()
        if p is None:
            raise StoreError(f"{self.path}: store has no images (imported with --metadata-only?)")
        return zarr.open_array(str(p), mode="r")

    def image_rows(self) -> np.ndarray:
        """Row of each particle (store order) in :meth:`image_array` (read once per store object;
        stores are immutable; the array is read-only)."""
        if self._image_rows is None:
            rows = numeric_values(self.table([IMAGE_ROW]).column(0))
            rows.flags.writeable = False
            self._image_rows = rows
        return self._image_rows

    def images(self, *, finite: bool = False) -> Any:
        """Lazy dask array (n, box, box) of this store's particle images in store order.

        ``finite``: each block is checked as it is read, and a particle whose image holds a NaN or an
        infinity raises :class:`InputError` naming the store and the particle (:func:`check_finite`):
        the compute jobs ask for it, since one such pixel turns every map and score into NaN.
        """
        import dask.array as da

        z = self.image_array()
        x = da.from_zarr(z)  # type: ignore[no-untyped-call]  # dask.array.from_zarr is unannotated
        rows = self.image_rows()
        if not (len(rows) == z.shape[0] and np.array_equal(rows, np.arange(len(rows)))):
            x = x[rows]
        if finite:
            x = x.map_blocks(_finite_block, str(self.path), dtype=x.dtype, meta=np.empty((0, 0, 0), x.dtype))
        return x

    def read_images(self, start: int, stop: int, *, finite: bool = False) -> np.ndarray:
        """Images of particles ``start:stop`` (store order) as a NumPy array (``finite``: as :meth:`images`)."""
        z = self.image_array()
        rows = self.image_rows()[start:stop]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            out = np.asarray(z[int(rows[0]) : int(rows[-1]) + 1])
        else:
            out = np.asarray(z.get_orthogonal_selection((rows, slice(None), slice(None))))
        if finite:
            check_finite(out, start, str(self.path))
        return out


def check_finite(images: np.ndarray, start: int, source: str) -> None:
    """Raise :class:`InputError` when any of ``images`` (particles ``start, start + 1, ...`` of ``source``)
    holds a NaN or an infinity, naming the particles (0-based, store order, as ``cryoframe query`` counts)."""
    bad = nonfinite_images(images)
    if len(bad):
        try:  # only on the error path: the store, for the particles' uids
            who: ParticleStore | Path = ParticleStore(source)
        except Exception:  # noqa: BLE001  # the message without uids rather than a second error
            who = Path(source)
        raise bad_particles(who, bad, "the images of {who} hold NaN or infinite pixels; expected finite values",
                            "re-extract them", start=start)


def _finite_block(block: np.ndarray, source: str, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """:func:`check_finite` of one dask block of :meth:`ParticleStore.images` (its first row from ``block_info``)."""
    start = 0 if not block_info else int(block_info[0]["array-location"][0][0])
    check_finite(block, start, source)
    return block


def materialize(view: ParticleStore, out: str | os.PathLike[str], *, overwrite: bool = False) -> ParticleStore:
    """A plain store at ``out`` holding a full copy of ``view``'s metadata (images stay referenced)."""
    if view.view is None:
        raise InputError(f"{view.path}: not a view (it is a plain store already; nothing to materialize)")
    root = view.view.root
    with StoreWriter(out, op="materialize", params={}, inputs=[view], parent=view, overwrite=overwrite) as w:
        for t in view.iter_batches():
            w.write_metadata(t)
        if root.has_images:
            w.link_images(root)
        opt = view.optics()
        if opt is not None:
            w.write_optics(opt)
        src = view.extras_dir()
        if src.is_dir():
            shutil.copytree(src, w.extras_dir(), dirs_exist_ok=True)
        return w.commit(psize_A=view.psize_A, box_px=view.box, source=view.manifest.get("source"))
