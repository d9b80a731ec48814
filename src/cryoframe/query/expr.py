"""Filter store metadata with pandas/dask ``query`` expressions.

Field names with ``/`` are written in backticks: ```ctf/df1_A` < 15000``.  Queries are lazy
dask graphs over the Parquet partitions; :func:`filter_store` streams the matching rows of
each partition into a new store that references the parent's images (no copy).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from cryoframe.errors import InputError
from cryoframe.storage.store import IMAGE_ROW, ParticleStore, StoreWriter

__all__ = ["arrow_filter", "filter_store", "filter_table", "query_frame"]


def _columns(store: ParticleStore, columns: Sequence[str] | None, internal: bool) -> list[str] | None:
    if columns is None:
        return None
    cols = ["uid", *[c for c in columns if c != "uid"]]
    if internal and store.has_images:
        cols.append(IMAGE_ROW)
    return cols


def _explain(store: ParticleStore, where: str, exc: Exception) -> InputError:
    names = set(re.findall(r"`([^`]+)`", where))
    missing = sorted(nm for nm in names if nm not in store.fields)
    if missing:
        return InputError(f"{store.path}: query names unknown field(s) {', '.join(missing)}; fields are: "
                          f"{', '.join(store.fields)}")
    return InputError(f"bad --where expression {where!r}: {exc} (quote field names with backticks: `ctf/df1_A`)")


def query_frame(store: ParticleStore, where: str | None = None, columns: Sequence[str] | None = None,
                *, include_internal: bool = False) -> Any:
    """Lazy dask dataframe of ``store``'s rows matching ``where`` (all rows when None)."""
    cols = _columns(store, columns, include_internal)
    if cols is not None:
        store._check_columns(cols)
    ddf = store.metadata(None if where else cols, include_internal=include_internal)
    if where:
        from cryoframe.query.polygon import pandas_locals

        expr, local = _uint64_literals(where)
        expr, poly = pandas_locals(expr)  # inpolygon(...) as a local function
        local.update(poly)
        try:
            ddf = ddf.query(expr, local_dict=local) if local else ddf.query(expr)
        except Exception as exc:  # pandas raises many types for bad expressions
            raise _explain(store, where, exc) from exc
        if cols is not None:
            ddf = ddf[cols]  # projection after the filter (dask pushes it down to Parquet)
    return ddf


_BIG_INT = re.compile(r"(?<![\w.`])(\d{19,20})(?![\w.])")


def _uint64_literals(where: str) -> tuple[str, dict[str, Any]]:
    """Integer literals beyond int64 (uids use the full uint64 range) become uint64 locals.

    pandas would otherwise overflow converting them to C long.
    """
    import numpy as np

    local: dict[str, Any] = {}
    parts = where.split("`")
    for i in range(0, len(parts), 2):  # outside backticks only
        def repl(m: re.Match[str]) -> str:
            v = int(m.group(1))
            if v <= np.iinfo(np.int64).max:
                return m.group(1)
            if v > np.iinfo(np.uint64).max:
                raise InputError(f"integer literal {v} in --where is larger than the uint64 range")
            key = f"_cf_u{len(local)}"
            local[key] = np.uint64(v)
            return "@" + key

        parts[i] = _BIG_INT.sub(repl, parts[i])
    return "`".join(parts), local


def arrow_filter(store: ParticleStore, where: str | None) -> Any:
    """The Arrow expression for ``where`` (None: all rows), or raise Unsupported."""
    from cryoframe.query.arrow_expr import to_arrow_expression

    if not where:
        return None
    expr, local = _uint64_literals(where)
    fields = {f["name"] for f in store.manifest["fields"]}
    return to_arrow_expression(expr, fields, local)[0]


def filter_table(store: ParticleStore, where: str | None = None, columns: Sequence[str] | None = None,
                 *, include_internal: bool = False) -> pa.Table:
    """Matching rows as one Arrow table, in store order.

    Evaluated by Arrow's kernels while Parquet is read when the expression translates (see
    :mod:`cryoframe.query.arrow_expr`), else by pandas over the dask dataframe.
    """
    import pyarrow.parquet as pq

    from cryoframe.query.arrow_expr import Unsupported

    cols = _columns(store, columns, include_internal)
    if cols is not None:
        store._check_columns(cols)
    elif not include_internal:
        cols = store.fields
    try:
        expr = arrow_filter(store, where)
        parts = [pq.read_table(f, columns=cols, filters=expr) for f in store._files]
        return pa.concat_tables(parts)
    except (Unsupported, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pdf = query_frame(store, where, columns, include_internal=include_internal).compute()
        return pa.Table.from_pandas(pdf, preserve_index=False)


def filter_store(
    store: ParticleStore,
    out: str | os.PathLike[str],
    where: str | None = None,
    columns: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
) -> ParticleStore:
    """Write the rows of ``store`` matching ``where`` as a new store referencing its images."""
    import dask
    import pyarrow.parquet as pq

    from cryoframe.query.arrow_expr import Unsupported

    ddf = query_frame(store, where, columns, include_internal=True)  # validates names and syntax
    schema = store.schema
    keep = [schema.field(c) for c in ddf.columns]
    out_schema = pa.schema(keep, metadata=schema.metadata)
    params = {"where": where, "columns": list(columns) if columns else None}
    try:
        expr = arrow_filter(store, where)
        arrow_parts = [(lambda f=f: pq.read_table(f, columns=[k.name for k in keep], filters=expr))
                       for f in store._files]
        first = arrow_parts[0]()  # evaluation errors surface here, before anything is written
        arrow_parts[0] = lambda: first
    except (Unsupported, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        arrow_parts = None
    with StoreWriter(out, op="query", params=params, inputs=[store], parent=store, overwrite=overwrite) as w:
        wrote = False
        parts = arrow_parts if arrow_parts is not None else ddf.to_delayed()
        for part in parts:
            try:
                tbl = part() if arrow_parts is not None else pa.Table.from_pandas(dask.compute(part)[0],
                                                                                 preserve_index=False)
            except Exception as exc:
                raise _explain(store, where or "", exc) from exc
            tbl = pa.Table.from_arrays([tbl.column(f.name).cast(f.type) for f in keep], schema=out_schema)
            w.write_metadata(tbl)
            wrote = True
        if not wrote:
            w.write_metadata(out_schema.empty_table())
        if store.has_images:
            w.link_images(store)
        opt = store.optics()
        if opt is not None:
            w.write_optics(opt)
        return w.commit(psize_A=store.psize_A, box_px=store.box, source=store.manifest.get("source"))
