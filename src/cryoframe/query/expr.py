"""Filter store metadata with pandas/dask ``query`` expressions.

Field names with ``/`` are written in backticks: ```ctf/df1_A` < 15000``.  Queries are lazy
dask graphs over the Parquet partitions; :func:`filter_store` reads only the fields the
expression names and writes the matching rows as a view of the store (a selection, no metadata
or image copy; see :mod:`cryoframe.storage.view`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from cryoframe.errors import InputError
from cryoframe.storage.store import IMAGE_ROW, ParticleStore

__all__ = ["arrow_filter", "expression_error", "filter_store", "filter_table", "match_positions", "pandas_query", "prepare_where",
           "query_frame"]


def expression_error(exc: BaseException) -> bool:
    """True when ``exc`` is the user's: the --where text does not parse, names an unknown field,
    or compares/combines values of the wrong types.

    Parsing raises SyntaxError/ValueError (AttributeError for operators pandas does not support), unknown names pandas' ``UndefinedVariableError`` (a
    NameError) or KeyError, bad comparisons TypeError or NotImplementedError.  Arrow's I/O and
    data errors (``ArrowInvalid`` is a ValueError, a corrupt page an OSError) and everything else
    (MemoryError, a lost worker...) are not: those propagate with their own message.
    """
    while isinstance(exc, RuntimeError) and (exc.__cause__ or exc.__context__):  # dask: "Failed to generate metadata"
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if isinstance(exc, pa.ArrowException) and not isinstance(exc, pa.ArrowNotImplementedError | pa.ArrowTypeError):
        return False
    if isinstance(exc, AttributeError):  # pandas' parser has no visit_<Node> for unsupported syntax (`>>`)
        return "visit_" in str(exc)
    return isinstance(exc, SyntaxError | NameError | KeyError | TypeError | ValueError | NotImplementedError)


def _columns(store: ParticleStore, columns: Sequence[str] | None, internal: bool) -> list[str] | None:
    if columns is None:
        return None
    cols = ["uid", *[c for c in columns if c != "uid"]]
    if internal and store.has_images:
        cols.append(IMAGE_ROW)
    return cols


class _HasFields(Protocol):
    """What error messages need of a store (a :class:`ParticleStore` or a joined view)."""

    @property
    def path(self) -> Path: ...
    @property
    def fields(self) -> list[str]: ...


def _explain(store: _HasFields, where: str, exc: Exception) -> InputError:
    names = set(re.findall(r"`([^`]+)`", where))
    missing = sorted(nm for nm in names if nm not in store.fields)
    if missing:
        return InputError(f"{store.path}: query names unknown field(s) {', '.join(missing)}; fields are: "
                          f"{', '.join(store.fields)}")
    return InputError(f"bad --where expression {where!r}: {exc} (quote field names with backticks: `ctf/df1_A`)")


def pandas_query(frame: Any, expr: str, local: dict[str, Any], store: _HasFields, where: str) -> Any:
    """``frame.query(expr)`` (pandas or dask) with ``local`` variables; the expression's own errors
    become one :class:`InputError` naming the store and what is wrong, others propagate."""
    try:
        return frame.query(expr, local_dict=local) if local else frame.query(expr)
    except Exception as exc:
        if not expression_error(exc):
            raise
        raise _explain(store, where, exc) from exc


def query_frame(store: ParticleStore, where: str | None = None, columns: Sequence[str] | None = None,
                *, include_internal: bool = False) -> Any:
    """Lazy dask dataframe of ``store``'s rows matching ``where`` (all rows when None)."""
    cols = _columns(store, columns, include_internal)
    if cols is not None:
        store.check_columns(cols)
    ddf = store.metadata(None if where else cols, include_internal=include_internal)
    if where:
        expr, local = prepare_where(where)
        ddf = pandas_query(ddf, expr, local, store, where)
        if cols is not None:
            ddf = ddf[cols]  # projection after the filter (dask pushes it down to Parquet)
    return ddf


_BIG_INT = re.compile(r"(?<![\w.`])(\d{19,20})(?![\w.])")
_NULL_TEST = re.compile(r"(`[^`]+`|(?<![\w.`@])[A-Za-z_]\w*)\s*\.\s*(isnull|isna|notnull|notna)\(\s*\)")


def prepare_where(where: str) -> tuple[str, dict[str, Any]]:
    """The expression pandas and the Arrow translator evaluate, and its local variables.

    * ``X.isnull()``/``isna()`` is true for NaN *and* null (pandas' classic meaning; cryoSPARC
      files mark missing values with NaN), ``notnull()``/``notna()`` its complement, whatever the
      column's backing (Arrow-backed pandas would otherwise treat NaN as a value):
      ``((X != X) | X.isna())``.
    * integer literals beyond int64 become uint64 locals (see :func:`_uint64_literals`).
    """
    def null_test(m: re.Match[str]) -> str:
        x, fn = m.group(1), m.group(2)
        test = f"(({x} != {x}) | {x}.isna())"
        return test if fn in ("isnull", "isna") else f"(~{test})"

    from cryoframe.query.polygon import pandas_locals

    parts = where.split('"')
    for i in range(0, len(parts), 2):  # outside double-quoted strings
        parts[i] = _NULL_TEST.sub(null_test, parts[i])
    expr, local = _uint64_literals('"'.join(parts))
    expr, poly = pandas_locals(expr)  # inpolygon(...) as a local function (lasso selections)
    local.update(poly)
    return expr, local


_INT_LIST = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*,?\s*\]")


def _uint64_literals(where: str) -> tuple[str, dict[str, Any]]:
    """Integer literals beyond int64 (uids use the full uint64 range) become uint64 locals.

    pandas would otherwise overflow converting them to C long.  A list of integer literals holding
    one becomes one uint64 array local (``uid in [15397802973147551045, 7]``): pandas' parser takes
    ``in @array`` but not a list of ``@`` locals.
    """
    import numpy as np

    local: dict[str, Any] = {}
    parts = where.split("`")
    for i in range(0, len(parts), 2):  # outside backticks only
        def repl_list(m: re.Match[str]) -> str:
            values = [int(v) for v in re.findall(r"\d+", m.group(0))]
            if max(values) <= np.iinfo(np.int64).max:
                return m.group(0)
            if max(values) > np.iinfo(np.uint64).max:
                raise InputError(f"integer literal {max(values)} in --where is larger than the uint64 range")
            key = f"_cf_u{len(local)}"
            local[key] = np.array(values, dtype=np.uint64)
            return "@" + key

        def repl(m: re.Match[str]) -> str:
            v = int(m.group(1))
            if v <= np.iinfo(np.int64).max:
                return m.group(1)
            if v > np.iinfo(np.uint64).max:
                raise InputError(f"integer literal {v} in --where is larger than the uint64 range")
            key = f"_cf_u{len(local)}"
            local[key] = np.uint64(v)
            return "@" + key

        parts[i] = _BIG_INT.sub(repl, _INT_LIST.sub(repl_list, parts[i]))
    return "`".join(parts), local


def arrow_filter(store: ParticleStore, where: str | None) -> Any:
    """The Arrow expression for ``where`` (None: all rows), or raise Unsupported."""
    from cryoframe.query.arrow_expr import to_arrow_expression

    if not where:
        return None
    expr, local = prepare_where(where)
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
        store.check_columns(cols)
    elif not include_internal:
        cols = store.fields
    try:
        if store.view is not None:
            from cryoframe.storage.view import read_rows

            return read_rows(store, match_positions(store, where), cols)
        expr = arrow_filter(store, where)
        parts = [pq.read_table(f, columns=cols, filters=expr) for f in store.metadata_files]
        return pa.concat_tables(parts)
    except (Unsupported, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        ddf = query_frame(store, where, columns, include_internal=include_internal)
        try:
            pdf = ddf.compute()
        except Exception as exc:
            if not (where and expression_error(exc)):
                raise
            raise _explain(store, where, exc) from exc
        return pa.Table.from_pandas(pdf, preserve_index=False)


def filter_store(
    store: ParticleStore,
    out: str | os.PathLike[str],
    where: str | None = None,
    columns: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
) -> ParticleStore:
    """Write the rows of ``store`` matching ``where`` as a view of it (selection only, no metadata copy)."""
    from cryoframe.storage.view import write_view

    cols = _columns(store, columns, True)
    if cols is not None:
        store.check_columns(cols)
    params = {"where": where, "columns": list(columns) if columns else None}
    return write_view(out, store, match_positions(store, where), op="query", params=params, columns=cols,
                      overwrite=overwrite)


def match_positions(store: ParticleStore, where: str | None) -> np.ndarray:
    """Store-order positions of the rows matching the pandas-style ``where`` (all when None).

    Only the fields the expression names are read; Arrow evaluates it when it translates
    (:mod:`cryoframe.query.arrow_expr`), pandas ``DataFrame.query`` otherwise.
    """
    from cryoframe.query.arrow_expr import Unsupported, to_arrow_expression

    if not where:
        return np.arange(store.n, dtype=np.int64)
    expr, local = prepare_where(where)
    have = {f["name"] for f in store.manifest["fields"]}
    try:
        aexpr, names = to_arrow_expression(expr, have, local)
    except Unsupported:
        return _match_pandas(store, where)
    key = "__cf_row"
    out = []
    start = 0
    try:
        for b in store.iter_batches(sorted(names) or ["uid"]):
            idx = np.arange(start, start + b.num_rows, dtype=np.int64)
            out.append(b.append_column(key, pa.array(idx)).filter(aexpr).column(key).to_numpy())
            start += b.num_rows
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _match_pandas(store, where)  # Arrow cannot evaluate it on these types: pandas decides
    except InputError:
        raise
    except Exception as exc:  # only the expression's own (parse/name/type) errors are the user's
        if not expression_error(exc):
            raise
        raise _explain(store, where, exc) from exc
    return np.concatenate(out) if out else np.empty(0, np.int64)


def _match_pandas(store: ParticleStore, where: str) -> np.ndarray:
    import pandas as pd

    expr, local = prepare_where(where)
    out, start = [], 0
    for b in store.iter_batches():
        pdf = b.to_pandas(types_mapper=pd.ArrowDtype)
        pdf.index = np.arange(start, start + b.num_rows)
        hit = pandas_query(pdf, expr, local, store, where)
        out.append(hit.index.to_numpy(dtype=np.int64))
        start += b.num_rows
    return np.concatenate(out) if out else np.empty(0, np.int64)
