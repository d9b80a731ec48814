"""Cross-job queries: stores joined on ``uid`` (pyarrow ``Table.join``), one question across jobs.

Fields present in more than one store are suffixed ``@<store name>`` (``alignments3D/pose@j24``);
``uid`` and fields unique to one store keep their names.  The result keeps the first store's row
order and images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from cryoframe.errors import InputError
from cryoframe.storage.store import IMAGE_ROW, ParticleStore, StoreWriter

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["join_stores", "joined_table", "write_query"]

_ORDER = "__cf_order"


def _names(stores: Sequence[ParticleStore]) -> list[str]:
    names = [s.path.name.removesuffix(".cf") for s in stores]
    if len(set(names)) != len(names):
        names = [f"{n}{i}" for i, n in enumerate(names)]
    return names


def joined_table(stores: Sequence[ParticleStore]) -> pa.Table:
    """Inner join of the stores' metadata on uid, in the first store's order (internal columns of
    the first store kept, so images still resolve)."""
    if len(stores) < 2:
        raise InputError("a join needs at least two stores")
    names = _names(stores)
    counts: dict[str, int] = {}
    for s in stores:
        for f in s.fields:
            counts[f] = counts.get(f, 0) + 1
    tables = []
    keys: pa.Table | None = None
    for i, (s, nm) in enumerate(zip(stores, names, strict=True)):
        t = s.table()
        if i > 0:
            t = t.select([c for c in t.column_names if not c.startswith("_")])
        # uids are unique in every store (checked at import, kept by every operation)
        ren = [c if (c == "uid" or c.startswith("_") or counts.get(c, 0) < 2) else f"{c}@{nm}" for c in t.column_names]
        tables.append(t.rename_columns(ren))
    tables[0] = tables[0].append_column(_ORDER, pa.array(np.arange(tables[0].num_rows, dtype=np.int64)))
    if not any(pa.types.is_fixed_size_list(f.type) or pa.types.is_list(f.type) for t in tables for f in t.schema):
        result = tables[0]
        for t in tables[1:]:
            result = result.join(t, keys="uid", join_type="inner", use_threads=True)
        if result.num_rows == 0:
            raise InputError(f"stores {', '.join(s.path.name for s in stores)} have no uids in common")
        result = result.sort_by(_ORDER).drop_columns([_ORDER])
    else:
        # pyarrow's join cannot carry FixedSizeList columns: join (uid, row) pairs, then take
        for i, t in enumerate(tables):
            k = pa.table({"uid": t.column("uid"), f"{_ORDER}{i}": pa.array(np.arange(t.num_rows, dtype=np.int64))})
            keys = k if keys is None else keys.join(k, keys="uid", join_type="inner", use_threads=True)
        assert keys is not None
        if keys.num_rows == 0:
            raise InputError(f"stores {', '.join(s.path.name for s in stores)} have no uids in common")
        keys = keys.sort_by(f"{_ORDER}0")
        cols: dict[str, pa.ChunkedArray] = {}
        for i, t in enumerate(tables):
            taken = t.take(keys.column(f"{_ORDER}{i}"))
            for c in taken.column_names:
                if (c == "uid" and i > 0) or c == _ORDER:
                    continue
                cols[c] = taken.column(c)
        result = pa.table(cols)
    # restore field metadata (numpy dtypes) lost by the join
    fields = []
    for c in result.column_names:
        base, _, nm = c.partition("@")
        src = stores[names.index(nm)] if nm else next(s for s in stores if base in s.schema.names)
        f = src.schema.field(base)
        fields.append(pa.field(c, result.schema.field(c).type, metadata=f.metadata))
    return pa.Table.from_arrays(result.columns, schema=pa.schema(fields))


def join_stores(stores: Sequence[ParticleStore], out: str | os.PathLike[str] | None = None, where: str | None = None,
                columns: Sequence[str] | None = None, *, head: int | None = None,
                overwrite: bool = False) -> pd.DataFrame | ParticleStore:
    """Join, filter with a pandas query, and either return rows (pandas) or write a store at ``out``."""
    import pandas as pd

    from cryoframe.query.expr import pandas_query, prepare_where

    t = joined_table(stores)
    df = t.to_pandas(types_mapper=pd.ArrowDtype)
    if where:
        expr, local = prepare_where(where)
        df = pandas_query(df, expr, local, _JoinedView(t), where)
    keep = list(df.columns) if columns is None else ["uid", *[c for c in columns if c != "uid"]]
    missing = [c for c in keep if c not in df.columns]
    if missing:
        raise InputError(f"no field(s) {', '.join(missing)} in the join; fields are: "
                         f"{', '.join(c for c in df.columns if not c.startswith('_'))}")
    if out is None:
        shown = df[[c for c in keep if not c.startswith("_")]]
        return shown if head is None else shown.head(head)
    if IMAGE_ROW in df.columns and IMAGE_ROW not in keep:
        keep.append(IMAGE_ROW)
    sub = pa.Table.from_pandas(df[keep], preserve_index=False)
    sub = pa.Table.from_arrays([sub.column(c).cast(t.schema.field(c).type) for c in keep],
                               schema=pa.schema([t.schema.field(c) for c in keep]))
    first = stores[0]
    params = {"join": [str(s.path) for s in stores], "where": where, "columns": list(columns) if columns else None}
    with StoreWriter(out, op="join", params=params, inputs=list(stores), parent=first, overwrite=overwrite) as w:
        w.write_metadata(sub)
        return w.derive(first)  # images, and optics: rows and their ctf/exp_group_id come from the first store


class _JoinedView:
    """Enough of a store for error messages about a joined table."""

    def __init__(self, t: pa.Table) -> None:
        from pathlib import Path

        self.fields = [c for c in t.column_names if not c.startswith("_")]
        self.path = Path("join")


def write_query(store: ParticleStore, out: str | os.PathLike[str], where: str | None = None,
                columns: Sequence[str] | None = None, *, join: Sequence[ParticleStore] = (),
                overwrite: bool = False) -> ParticleStore:
    """The store ``cryoframe query STORE [--join J ...] --where EXPR --out OUT`` writes: a view of
    ``store`` (no join), else the joined rows; the one function the CLI, the API and the curation
    page's save button call."""
    if join:
        result = join_stores([store, *join], out, where, columns, overwrite=overwrite)
        if not isinstance(result, ParticleStore):
            raise TypeError("join_stores with out returns a store")
        return result
    from cryoframe.query.expr import filter_store

    return filter_store(store, out, where, columns, overwrite=overwrite)
