"""View stores: a selection of a parent store's rows plus the columns a job adds (no metadata copy).

Layout of a view (``STORE/manifest.json`` has a ``view`` section; there is no ``metadata/``)::

    STORE/manifest.json     as for any store (n_particles, fields, images, lineage) + "view": {...}
    STORE/selection.npy     sorted row indices into the parent (uint32, uint64 when the parent has
                            2**32 rows or more), or a packed bitmap (np.packbits, one bit per parent
                            row) when that is smaller (more than 1 in 32 rows selected)
    STORE/added.parquet     optional: columns the job adds, one row per selected row, view order
    STORE/extras/           job products

``view`` records the parent (absolute path and the path relative to the view), the parent's
content hash, both row counts, the selection encoding and the added and *computed* columns (a
computed column, e.g. a GMM posterior, is evaluated on read from another column and a few
parameters, so it costs no bytes per row).  The parent is always a plain store: a view of a view
is written as one selection on the root (:func:`write_view` composes the selections and carries the
intermediate view's added columns), so reading never chains.

Opening a view checks that its parent exists, is the store the view was made from (content hash
recomputed from the parent's Parquet footers, not only read from its manifest) and has the recorded
row count; otherwise :class:`StoreError` names the parent and the hash.  Reading walks the parent's
row groups, skips those without selected rows (row positions are known from the Parquet footers),
``take``s the selected rows of the others and appends the added columns, which are in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cryoframe.errors import InputError, StoreError
from cryoframe.schema.types import numeric_array, numeric_values
from cryoframe.storage.atomic import check_output, replace_into, temp_path, write_json_atomic
from cryoframe.storage.manifest import FORMAT_VERSION, lineage_step

if TYPE_CHECKING:
    from cryoframe.storage.store import ParticleStore

__all__ = ["SELECTION", "ViewReader", "read_rows", "store_hash",
           "write_view"]

SELECTION = "selection.npy"
ADDED = "added.parquet"
_BITMAP = "bitmap"
_INDICES = "indices"


# -- selection encoding ------------------------------------------------------------------------
def _as_positions(rows: np.ndarray, n_parent: int, what: str) -> np.ndarray:
    """``rows`` (boolean mask over the parent, or row indices) as sorted unique int64 positions."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n_parent,):
            raise InputError(f"{what}: selection mask has {rows.size} entries, the parent has {n_parent} rows")
        return np.flatnonzero(rows)
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise InputError(f"{what}: selection must be integer row indices or a boolean mask, not {rows.dtype}")
    pos = rows.astype(np.int64, copy=False).ravel()
    if pos.size and (pos.min() < 0 or pos.max() >= n_parent):
        raise InputError(f"{what}: selection indexes rows {pos.min()}..{pos.max()}, the parent has rows "
                         f"0..{n_parent - 1}")
    if pos.size > 1 and not np.all(pos[1:] > pos[:-1]):
        pos = np.unique(pos)  # views keep parent order; duplicates would double particles
    return pos


def _dense(n_sel: int, n_parent: int) -> bool:
    return n_sel * (4 if n_parent < 2**32 else 8) * 8 > n_parent


def encode_selection(pos: np.ndarray, n_parent: int) -> tuple[np.ndarray, str]:
    """The smaller of sorted indices (uint32/uint64) and a packed bitmap for ``pos``."""
    itemsize = 4 if n_parent < 2**32 else 8
    if _dense(pos.size, n_parent):
        mask = np.zeros(n_parent, dtype=bool)
        mask[pos] = True
        return np.packbits(mask), _BITMAP
    return pos.astype(np.uint32 if itemsize == 4 else np.uint64), _INDICES


def check_selection(path: Path, encoding: str, n_parent: int, n_selected: int) -> np.ndarray:
    """The raw selection array, validated against the parent (bounds, order, count) without decoding."""
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable selection file: {exc}") from exc
    if encoding == _BITMAP:
        if raw.dtype != np.uint8 or raw.shape != ((n_parent + 7) // 8,):
            raise StoreError(f"{path}: bitmap of {raw.size} bytes does not match the parent's {n_parent} rows "
                             f"(expected {(n_parent + 7) // 8} bytes)")
        if n_parent % 8 and int(raw[-1]) & (0xFF >> (n_parent % 8)):
            raise StoreError(f"{path}: bitmap selects rows beyond the parent's {n_parent} rows")
        count = int(np.bitwise_count(raw).sum(dtype=np.int64))
    elif encoding == _INDICES:
        if raw.ndim != 1 or raw.dtype not in (np.uint32, np.uint64):
            raise StoreError(f"{path}: selection must be a 1-D uint32/uint64 array, not {raw.dtype} {raw.shape}")
        if raw.size > 1 and not np.all(raw[1:] > raw[:-1]):
            raise StoreError(f"{path}: selection indices are not strictly increasing")
        if raw.size and int(raw[-1]) >= n_parent:
            raise StoreError(f"{path}: selection indexes row {int(raw[-1])}, the parent has {n_parent} rows")
        count = raw.size
    else:
        raise StoreError(f"{path}: unknown selection encoding {encoding!r}")
    if count != n_selected:
        raise StoreError(f"{path}: selection holds {count} rows, the manifest says {n_selected}")
    return np.asarray(raw)


def decode_selection(raw: np.ndarray, encoding: str, n_parent: int) -> np.ndarray:
    """Sorted int64 parent positions from a checked selection array."""
    if encoding == _BITMAP:
        return np.flatnonzero(np.unpackbits(raw, count=n_parent))
    return raw.astype(np.int64)


# -- hashing -----------------------------------------------------------------------------------
def store_hash(store: ParticleStore) -> str:
    """Content hash of a plain store recomputed from its files (as :meth:`StoreWriter.commit` makes it)."""
    from cryoframe.storage.parquet import footer as _footer

    h = hashlib.blake2b(digest_size=16)
    files = sorted((store.path / "metadata").glob("*.parquet")) + sorted(store.path.glob("optics.parquet"))
    for f in files:
        h.update(_footer(f))
    h.update(repr(store.manifest.get("images")).encode())
    return f"blake2b:{h.hexdigest()}"


# -- computed columns --------------------------------------------------------------------------
def _gmm_max_posterior(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Largest posterior over the 1-D GMM components of ``spec`` at values ``x`` (NaN where x is)."""
    w = np.asarray(spec["weights"], dtype=np.float64)
    mu = np.asarray(spec["means"], dtype=np.float64)
    var = np.asarray(spec["variances"], dtype=np.float64)
    logp = np.log(w) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (x[:, None] - mu) ** 2 / var
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    out = (1.0 / p.sum(axis=1)).astype(np.float32)  # the largest term is exp(0) = 1
    out[~np.isfinite(x)] = np.nan
    return np.asarray(out)


_COMPUTE = {"gmm_max_posterior": _gmm_max_posterior}


def _computed_field(name: str) -> pa.Field:
    from cryoframe.schema.types import arrow_field

    return arrow_field(name, np.dtype("<f4"))


# -- reading -----------------------------------------------------------------------------------
@dataclass
class _Piece:
    file: Path
    row_group: int
    local: np.ndarray | None  # rows of the row group to take (None: all)
    start: int  # position of its first row in the view
    n: int


class ViewReader:
    """Rows ``pos`` of a plain store ``root`` + ``added`` columns (+ computed), as a store reads them."""

    def __init__(self, root: ParticleStore, pos: np.ndarray | Any, fields: Sequence[str], *,
                 added: Path | pa.Table | None = None, computed: dict[str, dict[str, Any]] | None = None) -> None:
        self.root = root
        self._pos = pos  # sorted int64 root positions, or a function returning them (decoded on first use)
        self.added = added
        self.computed = dict(computed or {})
        self._added_cache: dict[tuple[str, ...], pa.Table] = {}
        added_schema = (pq.read_schema(added) if isinstance(added, Path) else added.schema) if added is not None \
            else pa.schema([])
        self.added_names = set(added_schema.names)
        rschema = root.schema
        fl = []
        for name in fields:
            if name in self.computed:
                fl.append(_computed_field(name))
            elif name in self.added_names:
                fl.append(added_schema.field(name))
            else:
                fl.append(rschema.field(name))
        self.schema = pa.schema(fl, metadata=rschema.metadata)
        self._pieces: list[_Piece] | None = None

    @property
    def pos(self) -> np.ndarray:
        """Sorted int64 positions of the selected rows in the root store."""
        if callable(self._pos):
            self._pos = self._pos()
        return self._pos

    def pieces(self) -> list[_Piece]:
        """Parent row groups holding selected rows, with the rows to take from each."""
        if self._pieces is None:
            out = []
            base = 0
            done = 0
            for f in self.root.metadata_files:
                md = pq.ParquetFile(f).metadata
                for rg in range(md.num_row_groups):
                    m = md.row_group(rg).num_rows
                    a, b = np.searchsorted(self.pos, [base, base + m])
                    if b > a:
                        local = self.pos[a:b] - base
                        out.append(_Piece(f, rg, None if b - a == m else local, done, int(b - a)))
                        done += int(b - a)
                    base += m
            if base != self.root.n:
                raise StoreError(f"{self.root.path}: Parquet files hold {base} rows, the manifest says {self.root.n}")
            self._pieces = out
        return self._pieces

    def _added(self, names: tuple[str, ...]) -> pa.Table:
        if names not in self._added_cache:
            a = self.added
            if a is None:
                raise StoreError("this view holds no added columns")
            if isinstance(a, Path):
                with pq.ParquetFile(a) as f:  # not pq.read_table: that imports pyarrow.dataset (0.25 s)
                    self._added_cache[names] = f.read(columns=list(names))
            else:
                self._added_cache[names] = a.select(list(names))
        return self._added_cache[names]

    def _split(self, columns: Sequence[str] | None) -> tuple[list[str], list[str], list[str], list[str]]:
        want = list(self.schema.names) if columns is None else list(columns)
        comp = [c for c in want if c in self.computed]
        need = list(dict.fromkeys(want + [self.computed[c]["of"] for c in comp]))
        added = [c for c in need if c in self.added_names and c not in self.computed]
        root = [c for c in need if c not in self.added_names and c not in self.computed]
        return want, root, added, comp

    def read(self, pieces: Sequence[_Piece], columns: Sequence[str] | None = None) -> pa.Table:
        """The selected rows of ``pieces`` (consecutive), columns in ``columns`` order (all: schema order)."""
        want, rcols, acols, comp = self._split(columns)
        parts = []
        for p in pieces:
            t = pq.ParquetFile(p.file).read_row_group(p.row_group, columns=rcols)
            parts.append(t if p.local is None else t.take(numeric_array(p.local)))
        cols: dict[str, pa.ChunkedArray | pa.Array] = {}
        if parts:
            tbl = pa.concat_tables(parts)
            cols.update({c: tbl.column(c) for c in rcols})
        else:
            cols.update({c: pa.chunked_array([], type=self.root.schema.field(c).type) for c in rcols})
        a = pieces[0].start if pieces else 0
        n = sum(p.n for p in pieces)
        if acols:
            at = self._added(tuple(acols)).slice(a, n)
            cols.update({c: at.column(c) for c in acols})
        for c in comp:
            spec = self.computed[c]
            x = numeric_values(cols[spec["of"]]).astype(np.float64) if n else np.empty(0)
            cols[c] = numeric_array(_COMPUTE[spec["op"]](x, spec) if n else np.empty(0, np.float32))
        fields = [self.schema.field(c) for c in want]
        return pa.Table.from_arrays([cols[c] for c in want], schema=pa.schema(fields, metadata=self.schema.metadata))

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self.read(self.pieces(), columns)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 262_144) -> Iterator[pa.Table]:
        group: list[_Piece] = []
        for p in self.pieces():
            group.append(p)
            if sum(q.n for q in group) >= batch_size:
                yield self.read(group, columns)
                group = []
        if group or not self.pieces():
            yield self.read(group, columns)

    def metadata(self, columns: Sequence[str]) -> Any:
        """Lazy dask dataframe (pyarrow dtypes), one partition per ~250k selected rows."""
        import dask.dataframe as dd
        import pandas as pd

        groups: list[list[_Piece]] = [[]]
        for p in self.pieces():
            if sum(q.n for q in groups[-1]) >= 250_000:
                groups.append([])
            groups[-1].append(p)
        cols = list(columns)
        empty = self.read([], cols)
        meta = empty.to_pandas(types_mapper=pd.ArrowDtype)
        frame = dd.from_map(_ReadPart(self, cols), groups, meta=meta,  # type: ignore[no-untyped-call]  # dask is untyped
                            enforce_metadata=False)
        return frame


class _ReadPart:
    """Picklable partition reader for :meth:`ViewReader.metadata`."""

    def __init__(self, reader: ViewReader, columns: list[str]) -> None:
        self.reader, self.columns = reader, columns

    def __call__(self, group: list[_Piece]) -> Any:
        import pandas as pd

        return self.reader.read(group, self.columns).to_pandas(types_mapper=pd.ArrowDtype)


def open_view(store: ParticleStore) -> ViewReader:
    """Resolve and check a view's parent, decode its selection; the reader its store methods use."""
    v = store.manifest["view"]
    recorded = Path(v["parent"])
    cand = [recorded]
    if v.get("parent_rel"):
        cand.append((store.path / v["parent_rel"]).resolve())
    parent_path = next((p for p in cand if (p / "manifest.json").is_file()), None)
    h = v["parent_hash"]
    if parent_path is None:
        raise StoreError(f"{store.path}: view of parent store {recorded} (content hash {h}), which was not found "
                         "(moved or deleted?); restore it there, or `cryoframe materialize` views before moving "
                         "their parent")
    try:
        parent = type(store)(parent_path)
    except StoreError as exc:
        raise StoreError(f"{store.path}: parent store {parent_path} (content hash {h}) cannot be opened: {exc}") \
            from exc
    if parent.view is not None:
        raise StoreError(f"{store.path}: parent {parent_path} is itself a view (views must reference a plain store)")
    actual = store_hash(parent)
    if actual != h or parent.n != int(v["n_parent"]):
        raise StoreError(f"{store.path}: parent store {parent_path} changed since the view was made: content hash "
                         f"{actual} ({parent.n} rows), the view needs {h} ({v['n_parent']} rows)")
    if int(v["n_selected"]) != store.n:
        raise StoreError(f"{store.path}: view selects {v['n_selected']} rows, n_particles is {store.n}")
    raw = check_selection(store.path / v["selection"], v["encoding"], parent.n, store.n)
    added = store.path / v["added"] if v.get("added") else None
    if added is not None:
        if not added.is_file():
            raise StoreError(f"{added}: added-columns file missing")
        rows = pq.ParquetFile(added).metadata.num_rows
        if rows != store.n:
            raise StoreError(f"{added}: {rows} rows, the selection has {store.n}")
    fields = [f["name"] for f in store.manifest["fields"]]
    return ViewReader(parent, lambda: decode_selection(raw, v["encoding"], parent.n), fields, added=added, computed=v.get("computed"))


def read_rows(store: ParticleStore, positions: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
    """Rows at ``positions`` (sorted, store order) of a plain store or a view."""
    pos = np.asarray(positions, dtype=np.int64)
    if store.view is None:
        names = [f["name"] for f in store.manifest["fields"]]
        return ViewReader(store, pos, names).table(columns)
    v = store.view
    added = v._added(tuple(sorted(v.added_names))).take(numeric_array(pos)) if v.added_names else None
    return ViewReader(v.root, v.pos[pos], list(v.schema.names), added=added, computed=v.computed).table(columns)


# -- writing -----------------------------------------------------------------------------------
def write_view(
    out: str | os.PathLike[str],
    parent: ParticleStore,
    rows: np.ndarray,
    *,
    op: str,
    params: dict[str, Any] | None = None,
    added: pa.Table | None = None,
    computed: dict[str, dict[str, Any]] | None = None,
    columns: Sequence[str] | None = None,
    inputs: Sequence[ParticleStore] = (),
    overwrite: bool = False,
    extras: Path | None = None,
) -> ParticleStore:
    """Write the view of ``parent``'s ``rows`` (store-order indices or a boolean mask) at ``out``.

    ``added``: columns to add (one row per selected row, in order; a column named like a parent
    column replaces it).  ``computed``: columns evaluated on read, ``{name: {"op": ..., "of":
    column, ...}}``.  ``columns``: keep only these parent fields (``uid`` and internal columns are
    kept).  A ``parent`` that is a view is collapsed: the new view selects rows of its root and
    carries its added/computed columns.  Atomic: built under a temporary name, then renamed.
    """
    from cryoframe import __version__
    from cryoframe.schema import is_internal

    final = Path(out).absolute()
    if final.exists() and not overwrite:
        raise StoreError(f"{final}: already exists (choose another --out or pass --overwrite)")
    if not final.parent.is_dir():
        raise StoreError(f"{final.parent}: output directory does not exist")
    rows = np.asarray(rows)
    if rows.dtype == bool and parent.view is None and rows.shape == (parent.n,):
        n_sel = int(np.count_nonzero(rows))  # a mask over a plain store: encode without positions
        sel, enc = (np.packbits(rows), _BITMAP) if _dense(n_sel, parent.n) else \
            encode_selection(np.flatnonzero(rows), parent.n)
        pos: Any = None
    else:
        pos = _as_positions(rows, parent.n, str(final))
        n_sel = int(pos.size)
    if added is not None and added.num_rows != n_sel:
        raise InputError(f"{final}: {added.num_rows} added rows for {n_sel} selected rows")
    fields = [f["name"] for f in parent.manifest["fields"]]
    if columns is not None:
        parent.check_columns(columns)
        fields = list(dict.fromkeys(["uid", *columns, *[f for f in fields if is_internal(f)]]))
    comp = {}
    if parent.view is not None:  # collapse onto the root
        pv = parent.view
        root = pv.root
        carried = [c for c in sorted(pv.added_names) if c in fields and (added is None or c not in added.column_names)]
        if carried:
            base = pv._added(tuple(carried)).take(numeric_array(pos))
            if added is not None:
                for c in added.column_names:
                    base = base.append_column(added.schema.field(c), added.column(c))
            added = base
        comp = {k: s for k, s in pv.computed.items() if k in fields}
        root_pos = pv.pos[pos]
        sel, enc = encode_selection(root_pos, root.n)
    else:
        root = parent
        root_pos = pos
        if pos is not None:
            sel, enc = encode_selection(pos, root.n)
    if final == root.path:
        raise InputError(f"{final}: a view cannot replace its own parent store; choose another --out "
                         "(or materialize the result first)")
    comp.update(computed or {})
    for name, spec in comp.items():
        if spec.get("op") not in _COMPUTE:
            raise InputError(f"computed column {name}: unknown op {spec.get('op')!r}")
    add_names = list(added.column_names) if added is not None else []
    names = [f for f in fields if f not in add_names and f not in comp] + add_names + \
        [c for c in comp if c not in add_names]
    for spec in comp.values():
        if spec["of"] not in names:
            raise InputError(f"computed column needs {spec['of']!r}, which the view does not hold")
    reader = ViewReader(root, root_pos, names, added=added, computed=comp)

    tmp = temp_path(final)
    tmp.mkdir()
    try:
        (tmp / "extras").mkdir()
        if extras is not None and extras.is_dir():
            shutil.copytree(extras, tmp / "extras", dirs_exist_ok=True)
        np.save(tmp / SELECTION, sel, allow_pickle=False)
        h = hashlib.blake2b(digest_size=16)
        h.update(root.content_hash.encode())
        h.update(enc.encode())
        h.update(sel.tobytes())
        if added is not None:
            from cryoframe.storage.parquet import footer as _footer
            from cryoframe.storage.parquet import parquet_kwargs as _parquet_kwargs

            schema = pa.schema([reader.schema.field(c) for c in add_names], metadata=added.schema.metadata)
            pq.write_table(pa.Table.from_arrays([added.column(c) for c in add_names], schema=schema),
                           tmp / ADDED, **_parquet_kwargs(schema))
            h.update(_footer(tmp / ADDED))
        h.update(json.dumps([names, comp], sort_keys=True, default=str).encode())
        from cryoframe.schema import numpy_dtype_of

        flist = []
        for f in reader.schema:
            dt, shape = numpy_dtype_of(f)
            flist.append({"name": f.name, "numpy_dtype": dt.str, "shape": list(shape), "arrow_type": str(f.type)})
        images = dict(root.manifest["images"]) if root.manifest.get("images") else None
        if images is not None:
            src = root.images_path()
            images.update(path=os.path.relpath(src, final), abs_path=str(src), owner=False)
        lineage = list(parent.lineage)
        ins = [{"path": str(s.path), "hash": s.content_hash} for s in [parent, *inputs]]
        man = {
            "format": "cryoframe-store",
            "format_version": FORMAT_VERSION,
            "schema_version": 1,
            "cryoframe_version": __version__,
            "n_particles": n_sel,
            "box_px": root.box,
            "psize_A": root.psize_A,
            "fields": flist,
            "images": images,
            "optics": root.manifest.get("optics"),
            "content_hash": f"blake2b:{h.hexdigest()}",
            "source": root.manifest.get("source"),
            "view": {
                "parent": str(root.path),
                "parent_rel": os.path.relpath(root.path, final),
                "parent_hash": store_hash(root),
                "n_parent": root.n,
                "n_selected": n_sel,
                "selection": SELECTION,
                "encoding": enc,
                "added": ADDED if added is not None else None,
                "computed": comp,
            },
            "lineage": lineage + [lineage_step(op, params or {}, ins)],
        }
        write_json_atomic(tmp / "manifest.json", man)
        check_output(final, overwrite)  # the output may have appeared while this view was written
        replace_into(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return type(parent)(final)
