"""Translate pandas ``query`` strings into ``pyarrow.compute`` expressions.

The common curation filters (comparisons, ``and``/``or``/``not``, ``&``/``|``/``~``, arithmetic,
``in``/``not in`` lists, ``abs()``, chained comparisons) are evaluated by Arrow's C++ kernels
while Parquet is read (only the referenced columns are decoded first), which is as fast as
hand-written ``pyarrow.compute``.  Anything else raises :class:`Unsupported` and the caller falls
back to the pandas/dask evaluator, so the accepted syntax is exactly pandas'.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Unsupported", "to_arrow_expression"]

_BACKTICK = re.compile(r"`([^`]*)`")


class Unsupported(Exception):
    """The expression uses syntax the Arrow translator does not handle (use pandas instead)."""


def _literal(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return pa.scalar(v)
    if isinstance(v, int):  # non-negative as uint64 so comparisons with full-range uint64 uids work
        return pa.scalar(v, pa.uint64() if v >= 0 else pa.int64())
    if isinstance(v, float):
        return pa.scalar(v, pa.float64())
    if isinstance(v, str):
        return pa.scalar(v, pa.string())
    if hasattr(v, "item"):  # numpy scalars (e.g. uint64 locals)
        return _literal(v.item())
    raise Unsupported(f"literal {v!r}")


class _Translator(ast.NodeVisitor):
    def __init__(self, names: dict[str, str], local: dict[str, Any], fields: set[str]) -> None:
        self.names = names
        self.local = local
        self.fields = fields
        self.used: set[str] = set()

    def generic_visit(self, node: ast.AST) -> Any:
        raise Unsupported(type(node).__name__)

    def visit_Expression(self, node: ast.Expression) -> Any:
        return self.visit(node.body)

    def visit_Name(self, node: ast.Name) -> Any:
        name = self.names.get(node.id, node.id)
        if name.startswith("@"):
            key = name[1:]
            if key not in self.local:
                raise Unsupported(f"unknown local {key}")
            return _literal(self.local[key])
        if name in ("True", "False"):
            return pa.scalar(name == "True")
        if name not in self.fields:
            raise Unsupported(f"unknown name {name}")
        self.used.add(name)
        return pc.field(name)

    def visit_Constant(self, node: ast.Constant) -> Any:
        return _literal(node.value)

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        vals = [self.visit(v) for v in node.values]
        out = vals[0]
        for v in vals[1:]:
            out = (out & v) if isinstance(node.op, ast.And) else (out | v)
        return out

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        v = self.visit(node.operand)
        if isinstance(node.op, (ast.Not, ast.Invert)):
            return ~v
        if isinstance(node.op, ast.USub):
            return _call("negate", v) if isinstance(v, pc.Expression) else _literal(-v.as_py())
        if isinstance(node.op, ast.UAdd):
            return v
        raise Unsupported("unary op")

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        a, b = self.visit(node.left), self.visit(node.right)
        ops = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide", ast.Pow: "power"}
        if isinstance(node.op, ast.BitAnd):
            return _expr(a) & _expr(b)
        if isinstance(node.op, ast.BitOr):
            return _expr(a) | _expr(b)
        for k, fn in ops.items():
            if isinstance(node.op, k):  # in float64: no unsigned wrap-around, true division like pandas
                return _call(fn, _as_float(a), _as_float(b))
        raise Unsupported("binary op")

    def visit_Compare(self, node: ast.Compare) -> Any:
        out = None
        left = self.visit(node.left)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.In, ast.NotIn)):
                values = self._values(comp)
                big = all(isinstance(v, int) and v >= 0 for v in values) and max(values, default=0) > 2 ** 63 - 1
                term = _expr(left).isin(pa.array(values, pa.uint64()) if big else values)
                term = ~term if isinstance(op, ast.NotIn) else term
                right = None
            else:
                right = self.visit(comp)
                fns = {ast.Lt: "less", ast.LtE: "less_equal", ast.Gt: "greater", ast.GtE: "greater_equal",
                       ast.Eq: "equal", ast.NotEq: "not_equal"}
                fn = next((f for k, f in fns.items() if isinstance(op, k)), None)
                if fn is None:
                    raise Unsupported("comparison")
                term = _call(fn, left, right)
            out = term if out is None else out & term
            left = right if right is not None else left
        return out

    def _values(self, comp: ast.AST) -> list[Any]:
        """The right side of ``in``: a list of literals, or a local holding an array of them (a list of
        uint64 uids, :func:`cryoframe.query.expr.prepare_where`)."""
        if isinstance(comp, ast.Name):
            name = self.names.get(comp.id, comp.id)
            v = self.local.get(name[1:]) if name.startswith("@") else None
            if isinstance(v, np.ndarray) and v.ndim == 1:
                return v.tolist()
            raise Unsupported("in needs a literal list")
        if not isinstance(comp, (ast.List, ast.Tuple, ast.Set)):
            raise Unsupported("in needs a literal list")
        values = [c.value for c in comp.elts if isinstance(c, ast.Constant)]
        if len(values) != len(comp.elts):
            raise Unsupported("in list of non-literals")
        return values

    def visit_Call(self, node: ast.Call) -> Any:
        if isinstance(node.func, ast.Name) and node.func.id == "abs" and len(node.args) == 1 and not node.keywords:
            return _call("abs", self.visit(node.args[0]))
        if (isinstance(node.func, ast.Attribute) and node.func.attr == "isna" and not node.args
                and not node.keywords):  # pandas' isna on Arrow-backed data: null only (NaN is a value)
            return _expr(self.visit(node.func.value)).is_null(nan_is_null=False)
        if isinstance(node.func, ast.Name) and node.func.id == "inpolygon":  # lasso selections
            from cryoframe.query.polygon import arrow_from_call

            try:
                return arrow_from_call(node, lambda n: _expr(self.visit(n)))
            except ValueError as exc:  # the pandas path reports it
                raise Unsupported(str(exc)) from exc
        raise Unsupported("call")


def _call(fn: str, *args: Any, options: Any = None) -> Any:
    return pc.Expression._call(fn, [_expr(a) for a in args], options)


def _expr(x: Any) -> Any:
    return x if isinstance(x, pc.Expression) else pc.scalar(x)


def _as_float(x: Any) -> Any:
    if isinstance(x, pc.Expression):
        return _call("cast", x, options=pc.CastOptions(pa.float64()))
    return pa.scalar(float(x.as_py()), pa.float64())


def to_arrow_expression(where: str, fields: set[str], local: dict[str, Any] | None = None) -> tuple[Any, set[str]]:
    """(pyarrow.compute.Expression, referenced fields) for a pandas query string, or Unsupported."""
    names: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        key = f"__cf_bt{len(names)}"
        names[key] = m.group(1)
        return key

    text = _BACKTICK.sub(sub, where)
    text = re.sub(r"@([A-Za-z_]\w*)", lambda m: names.setdefault(f"__cf_at_{m.group(1)}", "@" + m.group(1))
                  and f"__cf_at_{m.group(1)}", text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise Unsupported(str(exc)) from exc
    t = _Translator(names, local or {}, fields)
    expr = t.visit(tree)
    if not isinstance(expr, pc.Expression):
        raise Unsupported("constant expression")
    return expr, t.used
