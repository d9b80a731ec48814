"""Polygon (lasso) selections in ``--where`` expressions: the ``inpolygon`` predicate.

``inpolygon(`x`, `y`, [[x1, y1], [x2, y2], ...])`` is true for the particles whose point
(``x``, ``y``) — two numeric fields, in their own units — lies inside the closed polygon with those
vertices (≥ 3, in the same units; the last vertex joins the first).  The even-odd (ray casting) rule
decides; a point exactly on an edge counts by the half-open convention of that rule, and NaN
coordinates are outside.  It combines with the rest of the syntax like any comparison::

    cryoframe query j24.cf --where 'inpolygon(`ctf/df1_A`, `alignments3D/error`, [[1e4, 2], [2e4, 2], [2e4, 5]]) and `alignments2D/class` in [1, 3]'

Both evaluators of :mod:`cryoframe.query.expr` run the same kernel (:func:`inpolygon`): Arrow
through a registered scalar function (:func:`arrow_inpolygon`), pandas through a local function
(:func:`pandas_locals`), so a lasso drawn in ``cryoframe view`` gives the same rows everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ARROW_FUNCTION", "arrow_inpolygon", "format_inpolygon", "inpolygon", "pandas_locals", "vertices"]

ARROW_FUNCTION = "cryoframe_inpolygon"
_PANDAS_NAME = "_cf_inpolygon"
_CALL = re.compile(r"(?<![\w@.])inpolygon\s*\(")


def vertices(v: Any) -> np.ndarray:
    """Polygon vertices as a float64 (n, 2) array; raise ValueError unless n ≥ 3 finite points."""
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 3:
        raise ValueError(f"inpolygon needs a list of at least 3 [x, y] vertices, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("inpolygon vertices must be finite numbers")
    return a


def _kernel():  # compiled on first use (numba import is slow)
    import numba

    @numba.njit(parallel=True, cache=True)
    def _pip(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray, out: np.ndarray) -> None:
        n = vx.shape[0]
        x0, x1, y0, y1 = vx.min(), vx.max(), vy.min(), vy.max()
        for i in numba.prange(x.shape[0]):
            px, py = x[i], y[i]
            if not (px >= x0 and px <= x1 and py >= y0 and py <= y1):  # also rejects NaN
                continue
            inside = False
            j = n - 1
            for k in range(n):
                yk, yj = vy[k], vy[j]
                if (yk > py) != (yj > py):
                    xc = vx[k] + (py - yk) * (vx[j] - vx[k]) / (yj - yk)
                    if px < xc:
                        inside = not inside
                j = k
            out[i] = inside

    return _pip


_PIP: Any = None


def inpolygon(x: Any, y: Any, polygon: Any) -> np.ndarray:
    """Boolean mask: is each point (``x[i]``, ``y[i]``) inside ``polygon`` (even-odd rule)?

    ``x``/``y`` are compared in float64 (float32 fields are widened exactly, like Arrow's and
    pandas' comparisons with float literals).
    """
    global _PIP
    v = vertices(polygon)
    xs = np.ascontiguousarray(_float64(x))
    ys = np.ascontiguousarray(_float64(y))
    if xs.shape != ys.shape:
        raise ValueError(f"inpolygon: x and y differ in length ({xs.size} vs {ys.size})")
    out = np.zeros(xs.shape[0], dtype=bool)
    if xs.size:
        if _PIP is None:
            _PIP = _kernel()
        _PIP(xs, ys, np.ascontiguousarray(v[:, 0]), np.ascontiguousarray(v[:, 1]), out)
    return out


def _float64(a: Any) -> np.ndarray:
    if hasattr(a, "to_numpy") and not isinstance(a, np.ndarray):
        try:  # pandas Series (possibly Arrow-backed with nulls)
            return a.to_numpy(dtype=np.float64, na_value=np.nan)
        except TypeError:  # pyarrow arrays
            import pyarrow.compute as pc

            return pc.cast(a, "float64").to_numpy(zero_copy_only=False)
    return np.asarray(a, dtype=np.float64).ravel()


def format_inpolygon(x_field: str, y_field: str, polygon: Sequence[Sequence[float]]) -> str:
    """The expression text for a polygon over two fields (coordinates written exactly: ``repr``)."""
    v = vertices(polygon)
    pts = ", ".join(f"[{float(a)!r}, {float(b)!r}]" for a, b in v)
    return f"inpolygon(`{x_field}`, `{y_field}`, [{pts}])"


# -- Arrow -------------------------------------------------------------------------------------
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    import pyarrow as pa
    import pyarrow.compute as pc

    def udf(ctx: Any, x: Any, y: Any, px: Any, py: Any) -> Any:
        def lst(s: Any) -> list[float]:
            return s.as_py() if isinstance(s, pa.Scalar) else s[0].as_py()

        poly = np.column_stack([lst(px), lst(py)])
        if isinstance(x, pa.Scalar) or isinstance(y, pa.Scalar):
            n = len(y) if isinstance(x, pa.Scalar) else len(x)
            x = pa.array(np.full(n, np.nan if x.as_py() is None else x.as_py()) if isinstance(x, pa.Scalar) else x)
            y = pa.array(np.full(n, np.nan if y.as_py() is None else y.as_py()) if isinstance(y, pa.Scalar) else y)
        return pa.array(inpolygon(x, y, poly), type=pa.bool_())

    try:
        pc.register_scalar_function(
            udf, ARROW_FUNCTION,
            {"summary": "point in polygon", "description": "cryoframe inpolygon(x, y, vertices) (even-odd rule)"},
            {"x": pa.float64(), "y": pa.float64(), "px": pa.list_(pa.float64()), "py": pa.list_(pa.float64())},
            pa.bool_())
    except pa.ArrowKeyError:  # already registered in this process
        pass
    _registered = True


def arrow_inpolygon(x: Any, y: Any, polygon: Any) -> Any:
    """A ``pyarrow.compute.Expression`` for ``inpolygon(x, y, polygon)`` (x, y: expressions)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    _register()
    v = vertices(polygon)
    f64 = pc.CastOptions(pa.float64())
    args = [pc.Expression._call("cast", [e], f64) for e in (x, y)]
    args += [pc.scalar(pa.scalar(v[:, k].tolist(), pa.list_(pa.float64()))) for k in (0, 1)]
    return pc.Expression._call(ARROW_FUNCTION, args)


# -- pandas ------------------------------------------------------------------------------------
def pandas_locals(where: str) -> tuple[str, dict[str, Any]]:
    """``where`` with ``inpolygon(`` calls (outside backticks) made pandas local-function calls,
    and the locals they need (empty when the expression has no polygon)."""
    parts = where.split("`")
    hit = False
    for i in range(0, len(parts), 2):
        parts[i], k = _CALL.subn(f"@{_PANDAS_NAME}(", parts[i])
        hit = hit or k > 0
    if not hit:
        return where, {}
    return "`".join(parts), {_PANDAS_NAME: lambda x, y, poly: inpolygon(x, y, poly)}


def arrow_from_call(node: Any, visit: Any) -> Any:
    """Arrow expression for an ``inpolygon(x, y, [[..], ..])`` call node of the query AST
    (``visit`` translates the coordinate arguments); ValueError when the call is malformed."""
    import ast

    if len(node.args) != 3 or node.keywords:
        raise ValueError("inpolygon takes (x, y, [[x1, y1], [x2, y2], ...])")
    try:
        poly = ast.literal_eval(node.args[2])
    except ValueError as exc:
        raise ValueError("inpolygon's vertices must be a literal list of [x, y] pairs") from exc
    return arrow_inpolygon(visit(node.args[0]), visit(node.args[1]), poly)
