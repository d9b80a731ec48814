"""NumPy structured-array fields <-> Arrow columns, losslessly.

Each Arrow field carries metadata ``numpy_dtype`` (e.g. ``<u8``, ``|S42``) and ``shape`` (JSON)
so a ``.cs`` file can be written back with the exact original dtypes.  Sub-array fields become
FixedSizeList columns; fixed-length byte strings become Arrow strings (binary when not UTF-8).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa

from cryoframe.errors import SchemaError

__all__ = [
    "INTERNAL_PREFIX",
    "arrow_field",
    "arrow_to_numpy",
    "is_canonical",
    "is_internal",
    "is_relion_label",
    "numpy_dtype_of",
    "numpy_to_arrow",
]

INTERNAL_PREFIX = "_"
"""Columns starting with this are cryoframe bookkeeping (e.g. ``_image_row``), never exported."""


def is_internal(name: str) -> bool:
    return name.startswith(INTERNAL_PREFIX)


def is_relion_label(name: str) -> bool:
    """Verbatim RELION columns kept from a ``.star`` import (``rlnDefocusU`` ...)."""
    return name.startswith("rln")


def is_canonical(name: str) -> bool:
    """cryoSPARC-named fields: ``uid`` or ``group/field``."""
    return name == "uid" or ("/" in name and not is_internal(name))


def _scalar_arrow_type(dt: np.dtype) -> pa.DataType:
    if dt.kind in "SUO":
        return pa.string()
    if dt.kind == "b":
        return pa.bool_()
    try:
        return pa.from_numpy_dtype(dt.newbyteorder("="))
    except (pa.ArrowNotImplementedError, TypeError) as exc:
        raise SchemaError(f"unsupported dtype {dt.str}") from exc


def arrow_field(name: str, dt: np.dtype, shape: tuple[int, ...] = ()) -> pa.Field:
    """Arrow field for a NumPy field of scalar dtype ``dt`` and sub-array ``shape``."""
    t = _scalar_arrow_type(dt)
    if shape:
        t = pa.list_(t, int(math.prod(shape)))
    meta = {"numpy_dtype": dt.str, "shape": json.dumps(list(shape))}
    return pa.field(name, t, metadata=meta)


def _decode_bytes(a: np.ndarray) -> pa.Array:
    """Fixed-width ``|Sn`` -> Arrow string (binary when not UTF-8), trailing NULs stripped.

    Done in Arrow's C++ kernels (zero-copy view, cast, rtrim): ~20x faster than np.char.decode.
    """
    import pyarrow.compute as pc

    a = np.ascontiguousarray(a)
    w = a.dtype.itemsize
    if w == 0 or len(a) == 0:
        return pa.array([b""] * len(a), type=pa.string())
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(w), len(a), [None, pa.py_buffer(a)])
    binary = fixed.cast(pa.binary())
    try:
        return pc.utf8_rtrim(binary.cast(pa.string()), characters="\x00")
    except pa.ArrowInvalid:
        return pa.array(a.tolist(), type=pa.binary())


def numpy_to_arrow(a: np.ndarray) -> pa.Array:
    """Convert one field column (shape ``(n,) + subshape``) into an Arrow array."""
    n = a.shape[0]
    sub = a.shape[1:]
    dt = a.dtype
    if dt.kind == "S":
        if sub:
            raise SchemaError("vector string fields are not supported")
        return _decode_bytes(a)
    if dt.kind in "UO":
        return pa.array(a.astype(str).tolist() if dt.kind == "O" else a, type=pa.string())
    flat = np.ascontiguousarray(a).reshape(n, -1) if sub else np.ascontiguousarray(a)
    if dt.byteorder == ">":
        flat = flat.astype(dt.newbyteorder("="))
    if sub:
        values = pa.array(flat.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(values, int(math.prod(sub)))
    return pa.array(flat)


def numpy_dtype_of(field: pa.Field) -> tuple[np.dtype, tuple[int, ...]]:
    """The NumPy scalar dtype and sub-array shape recorded on (or implied by) an Arrow field."""
    meta = field.metadata or {}
    shape: tuple[int, ...] = ()
    if b"shape" in meta:
        shape = tuple(json.loads(meta[b"shape"]))
    t = field.type
    if pa.types.is_fixed_size_list(t):
        if not shape:
            shape = (t.list_size,)
        t = t.value_type
    if b"numpy_dtype" in meta:
        return np.dtype(meta[b"numpy_dtype"].decode()), shape
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return np.dtype("S"), shape
    if pa.types.is_boolean(t):
        return np.dtype(bool), shape
    return np.dtype(t.to_pandas_dtype()), shape


def arrow_to_numpy(col: pa.Array | pa.ChunkedArray, dt: np.dtype, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Convert an Arrow column back to NumPy with dtype ``dt`` and sub-array ``shape``.

    A ``dt`` of ``|S0``/``S`` (unknown length) is sized to the longest string.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    if dt.kind in "SU" or pa.types.is_string(col.type) or pa.types.is_binary(col.type):
        values = col.to_pylist()
        enc = [v.encode("utf-8") if isinstance(v, str) else (v or b"") for v in values]
        width = max([len(v) for v in enc] + [dt.itemsize if dt.kind == "S" else 0, 1])
        return np.array(enc, dtype=f"S{width}")
    if pa.types.is_fixed_size_list(col.type):
        if col.null_count:
            raise SchemaError("vector column has missing values")
        flat = col.flatten().to_numpy(zero_copy_only=False)
        out = flat.reshape((n,) + (shape or (col.type.list_size,)))
    else:
        if col.null_count:
            raise SchemaError(f"column has {col.null_count} missing values; cannot write dtype {dt.str}")
        out = col.to_numpy(zero_copy_only=False)
    res: np.ndarray = out.astype(dt, copy=False)
    return res
