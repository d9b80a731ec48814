"""The selection model behind ``cryoframe view``: columns loaded on demand, selections as expressions.

A selection is a set of *terms* (the scatter's box or lasso, a range per histogram, a class
list, a typed expression) joined with ``and``.  Every term is a ``--where`` expression and is
evaluated by Arrow's kernels exactly as :func:`cryoframe.api.query` evaluates it (the same
translator, :mod:`cryoframe.query.arrow_expr`, with pandas as the fallback), on the columns it names
only, so the count shown is the count ``cryoframe query`` gives.  Per-term masks are cached: a new
box only evaluates the box.

Memory: only the fields a term names or a plot shows are read (Arrow arrays in the field's own
dtype; float32 fields are 4 bytes/particle), never the whole table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryoframe.errors import InputError
from cryoframe.schema.types import numeric_array
from cryoframe.storage.store import ParticleStore

__all__ = ["ViewData", "Selection", "format_classes", "format_range"]

_BT = re.compile(r"`([^`]+)`")
_NUM = r"(-?\d+\.?\d*(?:[eE][-+]?\d+)?)"
_OP = r"(<=|>=|<|>)"
_CHAIN = re.compile(rf"^{_NUM}\s*(<=|<)\s*`([^`]+)`\s*(<=|<)\s*{_NUM}$")
_LEFT = re.compile(rf"^`([^`]+)`\s*{_OP}\s*{_NUM}$")
_RIGHT = re.compile(rf"^{_NUM}\s*{_OP}\s*`([^`]+)`$")
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _compare(x: np.ndarray, op: str, c: float) -> np.ndarray:
    """``x OP c`` with ``c`` compared as float64 (like Arrow and pandas), computed in ``x``'s dtype.

    For float32 ``x``: ``x >= c`` ⟺ ``x >= ceil32(c)``, ``x < c`` ⟺ ``x < ceil32(c)``, ``x <= c`` ⟺
    ``x <= floor32(c)``, ``x > c`` ⟺ ``x > floor32(c)`` (ceil32/floor32: nearest float32 above/below).
    """
    if x.dtype == np.float32:
        c32 = np.float32(c)
        if np.isfinite(c32) and float(c32) != c:
            up = c32 if float(c32) > c else np.nextafter(c32, np.float32(np.inf))
            down = c32 if float(c32) < c else np.nextafter(c32, np.float32(-np.inf))
            c32 = up if op in (">=", "<") else down
        b: Any = c32
    else:
        b = np.float64(c)
    return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op](x, b)


def format_range(field: str, lo: float, hi: float) -> str:
    """``lo <= `field` <= hi`` with the bounds written exactly (``repr`` of the float64)."""
    lo, hi = sorted((float(lo), float(hi)))
    return f"{lo!r} <= `{field}` <= {hi!r}"


def format_classes(field: str, classes: Sequence[int]) -> str:
    """```field` in [i, j, ...]`` (what ``select2d --classes`` runs)."""
    return f"`{field}` in {sorted({int(c) for c in classes})}"


class ViewData:
    """One store (or several joined on uid) with per-field column caches, shared by all page sessions."""

    def __init__(self, store: ParticleStore, join: Sequence[ParticleStore] = ()) -> None:
        self.store = store
        self.join = list(join)
        self._joined: pa.Table | None = None
        if self.join:
            from cryoframe.query.join import joined_table

            self._joined = joined_table([store, *self.join])
            schema = self._joined.schema
            self.n = self._joined.num_rows
        else:
            schema = store.schema
            self.n = store.n
        from cryoframe.schema import is_internal

        self.fields = [f.name for f in schema if not is_internal(f.name)]
        self.numeric = [f.name for f in schema if f.name in self.fields and f.name != "uid"
                        and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
        self._cols: dict[str, pa.Array] = {}
        self._f32: dict[str, np.ndarray] = {}
        self._derived: dict[tuple[Any, ...], Any] = {}

    def cached(self, key: tuple[Any, ...], make: Any) -> Any:
        """A derived array (plot bins, pixel indices) shared by all page sessions, made once per key."""
        if key not in self._derived:
            if len(self._derived) > 32:
                self._derived.pop(next(iter(self._derived)))
            self._derived[key] = make()
        return self._derived[key]

    # -- columns -----------------------------------------------------------------------------
    def column(self, field: str) -> pa.Array:
        """The field's values (Arrow, own dtype), read once."""
        if field not in self._cols:
            if field not in self.fields:
                raise InputError(f"no field {field!r}; fields are: {', '.join(self.fields)}")
            # a numeric column without missing values: one NumPy buffer shared with Arrow (~0.4 GB per
            # float32 field at 1e8 saved against combining the Parquet chunks)
            arr = self.store.read_numeric(field) if self._joined is None else None
            col = None if arr is None else numeric_array(arr)
            if col is None:
                col = self._joined.column(field) if self._joined is not None else self.store.table([field]).column(0)
                col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            self._cols[field] = col
        return self._cols[field]

    def values(self, field: str) -> np.ndarray:
        """The field as float32 numpy (missing → NaN), for plotting."""
        if field not in self._f32:
            col = pc.cast(self.column(field), pa.float32(), safe=False)
            self._f32[field] = col.fill_null(np.nan).to_numpy(zero_copy_only=False) if col.null_count else \
                col.to_numpy(zero_copy_only=False)
        return self._f32[field]

    POSE = "alignments3D/pose"

    @property
    def has_poses(self) -> bool:
        return self.POSE in self.fields

    def start_pose_bins(self) -> None:
        """Compute :meth:`pose_bins` in a background thread (seconds at 1e7: the page does not wait)."""
        import threading

        if self.has_poses and "_pose_thread" not in self.__dict__:
            self._pose_thread = threading.Thread(target=self.pose_bins, daemon=True)
            self._pose_thread.start()

    @property
    def pose_ready(self) -> bool:
        return "_pose" in self.__dict__

    def pose_bins(self) -> np.ndarray:
        """Viewing-direction bin per particle (see :func:`cryoframe.view.render.pose_bins`), read in batches."""
        if "_pose" not in self.__dict__:
            from cryoframe.view.render import pose_bins

            def flat(col: Any) -> np.ndarray:
                col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
                return col.flatten().to_numpy(zero_copy_only=False)

            if self._joined is not None:
                batches: Any = [flat(self._joined.column(self.POSE))]
            else:
                batches = (flat(b.column(0)) for b in self.store.iter_batches([self.POSE], 1 << 20))
            self._pose = pose_bins(batches, n=self.n)
        return self._pose

    def extent(self, field: str) -> tuple[float, float]:
        v = self.values(field)
        v = v[np.isfinite(v)] if not np.isfinite(v).all() else v
        if not v.size:
            return 0.0, 1.0
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        return lo, hi

    # -- expressions -------------------------------------------------------------------------
    def evaluate(self, where: str) -> np.ndarray:
        """Boolean mask of the rows ``where`` selects (the semantics of ``cryoframe query``).

        Raises :class:`InputError` naming unknown fields or the syntax error.
        """
        from cryoframe.query.arrow_expr import Unsupported, to_arrow_expression
        from cryoframe.query.expr import _uint64_literals

        where = where.strip()
        if not where:
            return np.ones(self.n, dtype=bool)
        missing = sorted({nm for nm in _BT.findall(where) if nm not in self.fields})
        if missing:
            raise InputError(f"unknown field(s) {', '.join(missing)}")
        fast = self._ranges_fast(where)
        if fast is not None:
            return fast
        expr, local = _uint64_literals(where)
        try:
            aexpr, used = to_arrow_expression(expr, set(self.fields), local)
        except Unsupported:
            return self._pandas(expr, local)
        import pyarrow.dataset as ds

        tbl = pa.table({f: self.column(f) for f in sorted(used)}) if used else pa.table({"_": np.zeros(self.n)})
        try:
            m = ds.dataset(tbl).to_table(columns={"m": aexpr}).column("m")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return self._pandas(expr, local)
        m = pc.fill_null(m, False)
        return m.to_numpy(zero_copy_only=False).astype(bool, copy=False) if m.num_chunks != 1 else \
            m.chunk(0).to_numpy(zero_copy_only=False)

    def _ranges_fast(self, where: str) -> np.ndarray | None:
        """Comparisons of float fields with numbers joined by ``and`` (``lo <= `f` <= hi``, ```f` < c``,
        ``c >= `f```: boxes, histogram ranges, typed thresholds) in numpy, in the field's own precision
        with each bound rounded to it in the safe direction — the same rows as Arrow's float64
        comparison, at a quarter of the memory traffic.  None for any other expression."""
        conds = []
        for p in where.split(" and "):
            p = p.strip()
            p = p[1:-1] if p.startswith("(") and p.endswith(")") and p.count("(") == 1 else p
            m = _CHAIN.match(p)
            if m:
                conds += [(m.group(3), _FLIP[m.group(2)], m.group(1)), (m.group(3), m.group(4), m.group(5))]
                continue
            m = _LEFT.match(p)
            if m:
                conds.append((m.group(1), m.group(2), m.group(3)))
                continue
            m = _RIGHT.match(p)
            if not m:
                return None
            conds.append((m.group(3), _FLIP[m.group(2)], m.group(1)))
        mask = None
        for field, op, num in conds:
            col = self.column(field)
            if not pa.types.is_floating(col.type) or col.null_count:
                return None
            x = col.to_numpy(zero_copy_only=False)
            t = _compare(x, op, float(num))
            mask = t if mask is None else np.logical_and(mask, t, out=mask)
        return mask

    def _pandas(self, expr: str, local: dict[str, Any]) -> np.ndarray:
        import pandas as pd

        from cryoframe.query.polygon import pandas_locals

        expr, poly = pandas_locals(expr)
        local = {**local, **poly}
        names = [f for f in self.fields if f in expr]  # backticked or bare names the expression may use
        df = pd.DataFrame({f: self.column(f).to_pandas(types_mapper=pd.ArrowDtype) for f in names}) \
            if names else pd.DataFrame(index=pd.RangeIndex(self.n))
        try:
            r = df.eval(expr, local_dict=local)
        except Exception as exc:  # pandas raises many types for bad expressions
            raise InputError(f"bad expression: {exc}") from exc
        r = pd.Series(r) if not isinstance(r, pd.Series) else r
        if len(r) != self.n or not (pd.api.types.is_bool_dtype(r.dtype)):
            raise InputError("the expression is not a true/false condition on the particles")
        return r.to_numpy(dtype=bool, na_value=False)


class Selection:
    """Named terms joined with ``and``; :attr:`mask` and :attr:`count` are exact."""

    def __init__(self, data: ViewData) -> None:
        self.data = data
        self.terms: dict[str, str] = {}
        self._cache: dict[str, np.ndarray] = {}
        self.mask = np.ones(data.n, dtype=bool)
        self.count = data.n

    @property
    def expression(self) -> str:
        t = [v for v in self.terms.values() if v]
        if len(t) == 1:
            return t[0]
        return " and ".join(f"({v})" for v in t)

    def _term_mask(self, text: str) -> np.ndarray:
        if text not in self._cache:
            self._cache[text] = self.data.evaluate(text)
        return self._cache[text]

    def _recompute(self, terms: dict[str, str]) -> None:
        masks = [self._term_mask(v) for v in terms.values() if v]  # raises before anything changes
        if not masks:
            mask = np.ones(self.data.n, dtype=bool)
        else:
            mask = masks[0].copy() if len(masks) > 1 else masks[0]
            for m in masks[1:]:
                np.logical_and(mask, m, out=mask)
        self.terms, self.mask, self.count = terms, mask, int(np.count_nonzero(mask))
        # keep only the masks of the terms in use (a new box re-evaluates the box alone); a replaced
        # term's mask is n bytes (0.1 GB at 1e8 particles) that a session would otherwise pile up
        self._cache = {v: self._cache[v] for v in terms.values() if v and v in self._cache}

    def set_term(self, key: str, text: str | None) -> None:
        """Replace (or, with None/empty, remove) one term; raise InputError and keep the old selection."""
        terms = dict(self.terms)
        if text:
            terms[key] = text
        else:
            terms.pop(key, None)
        self._recompute(terms)

    def set_expression(self, text: str) -> None:
        """A typed expression replaces all terms (empty: everything)."""
        text = text.strip()
        if text == self.expression:
            return
        self._recompute({"typed": text} if text else {})

    def clear(self) -> None:
        self._recompute({})
