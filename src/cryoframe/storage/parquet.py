"""Parquet conventions of a store: writer options and the footer digest content hashes use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

__all__ = ["footer", "parquet_kwargs"]


def parquet_kwargs(schema: pa.Schema) -> dict[str, Any]:
    """zstd, statistics, dictionary encoding for string/binary columns only (never floats)."""
    dict_cols = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_binary(f.type)]
    return {"compression": "zstd", "use_dictionary": dict_cols, "write_statistics": True}


def footer(path: Path) -> bytes:
    """A Parquet file's size + footer (schema, row-group offsets, column statistics and sizes).

    Cheap to read for any file size, and it changes whenever the data does.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(max(0, size - 8))
        tail = fh.read(8)
        flen = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
        fh.seek(max(0, size - 8 - flen))
        return str(size).encode() + fh.read()
