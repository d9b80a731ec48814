"""cryoSPARC ``.cs`` files: NumPy ``.npy`` structured arrays (or compressed CSDAT via cryosparc-tools).

Reading is streamed: :class:`CsFile` memory-maps NumPy-format files so any row range of any
fields can be read without loading the file; :func:`write_cs` writes a header and appends
record batches, so exports of 1e7 rows also run in bounded memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cryoframe.errors import FormatError
from cryoframe.storage.atomic import atomic_path

__all__ = ["CsFile", "write_cs"]

NPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"


class CsFile:
    """A readable ``.cs`` file.

    ``fields`` lists ``(name, scalar dtype, subshape)``; :meth:`read` returns a dict of arrays
    for a row range.  Raises :class:`FormatError` naming the file for anything unreadable.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FormatError(f"{self.path}: no such .cs file")
        with self.path.open("rb") as fh:
            magic = fh.read(6)
        self._arrays: dict[str, np.ndarray] | None = None
        self._rec: np.ndarray | None = None
        self._npy = False
        if magic == NPY_MAGIC:
            self._open_npy()
        elif magic == CSDAT_MAGIC:
            self._open_csdat()
        else:
            raise FormatError(
                f"{self.path}: not a cryoSPARC .cs file (expected NumPy magic \\x93NUMPY or CSDAT, got {magic!r})"
            )
        if "uid" not in self.names:
            raise FormatError(f"{self.path}: field 'uid' missing (every cryoSPARC dataset has a uid column)")
        uid_dt = self.dtype_of("uid")
        if uid_dt.kind not in "ui" or uid_dt.itemsize != 8:
            raise FormatError(f"{self.path}: field 'uid' has dtype {uid_dt.str}, expected <u8")

    def _open_npy(self) -> None:
        fmt = np.lib.format
        try:
            with self.path.open("rb") as fh:
                version = fmt.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(fh, max_header_size=1 << 24)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(fh, max_header_size=1 << 24)
                else:
                    # format 3.0 (utf-8 header) has no public reader; numpy's stubs omit the private one
                    shape, fortran, dtype = fmt._read_array_header(  # type: ignore[attr-defined]
                        fh, version, max_header_size=1 << 24)
                self._offset = fh.tell()
        except Exception as exc:  # ValueError, EOFError, SyntaxError, tokenize.TokenError ...
            raise FormatError(f"{self.path}: truncated or garbled .cs file ({exc})") from exc
        dfields = dtype.fields
        if dtype.names is None or dfields is None or len(shape) != 1 or fortran:
            raise FormatError(f"{self.path}: .cs must hold a 1-D structured array, found {dtype} {shape}")
        if dtype.hasobject:
            raise FormatError(f"{self.path}: .cs holds Python objects; only fixed-size fields are supported")
        self.n = int(shape[0])
        need = self._offset + self.n * dtype.itemsize
        size = self.path.stat().st_size
        if size < need:
            raise FormatError(
                f"{self.path}: truncated or garbled .cs file ({size} bytes; header promises {self.n} rows = {need} bytes)"
            )
        self._dtype = dtype
        self._rec = None
        self._npy = True
        self.fields: list[tuple[str, np.dtype, tuple[int, ...]]] = []
        for name in dtype.names:
            dt = dfields[name][0]
            self.fields.append((name, dt.base, tuple(dt.shape)))

    def records(self) -> np.ndarray:
        """The whole file as a read-only memory-mapped record array (for random-access gathers)."""
        if self._rec is None:
            self._rec = np.memmap(self.path, dtype=self._dtype, mode="r", offset=self._offset, shape=(self.n,))
        return self._rec

    def _open_csdat(self) -> None:
        try:
            from cryosparc.dataset import Dataset
        except ImportError as exc:
            raise FormatError(
                f"{self.path}: compressed CSDAT .cs files need cryosparc-tools, a base dependency (pip install cryosparc-tools)"
            ) from exc
        try:
            ds = Dataset.load(str(self.path))
        except Exception as exc:  # cryosparc-tools raises assorted errors on bad files
            raise FormatError(f"{self.path}: truncated or garbled CSDAT file ({exc})") from exc
        self.n = len(ds)
        self._arrays = {}
        self.fields = []
        for name in ds.fields():
            a = np.asarray(ds[name])
            if a.dtype.kind == "O":
                a = np.array([s.encode() if isinstance(s, str) else bytes(s) for s in a], dtype="S")
            self._arrays[name] = a
            self.fields.append((name, a.dtype, tuple(a.shape[1:])))

    @property
    def names(self) -> list[str]:
        return [f[0] for f in self.fields]

    def dtype_of(self, name: str) -> np.dtype:
        for f, dt, _ in self.fields:
            if f == name:
                return dt
        raise FormatError(f"{self.path}: no field {name!r}")

    def read(self, fields: Sequence[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Arrays of ``fields`` (default all) for rows ``start:stop`` (copies, not views)."""
        stop = self.n if stop is None else min(stop, self.n)
        names = self.names if fields is None else list(fields)
        try:
            if self._npy:
                count = max(0, stop - start)
                step = max(1, (32 << 20) // max(1, self._dtype.itemsize))  # read <= 32 MiB at a time
                if count <= step:
                    block = np.fromfile(self.path, dtype=self._dtype, count=count,
                                        offset=self._offset + start * self._dtype.itemsize)
                    return {f: np.array(block[f]) for f in names}
                parts = [self.read(names, a, min(stop, a + step)) for a in range(start, stop, step)]
                return {f: np.concatenate([p[f] for p in parts]) for f in names}
            assert self._arrays is not None
            return {f: self._arrays[f][start:stop].copy() for f in names}
        except (ValueError, OSError) as exc:
            raise FormatError(f"{self.path}: cannot read rows {start}:{stop} ({exc})") from exc


def write_cs(
    path: str | os.PathLike[str],
    n: int,
    descr: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
    batches: Iterable[dict[str, np.ndarray]],
) -> None:
    """Write a NumPy-format ``.cs`` of ``n`` rows with fields ``descr`` from record batches.

    Written to a temporary name and renamed, so a failure leaves no partial file.
    """
    path = Path(path)
    dtype = np.dtype([(name, dt, shape) if shape else (name, dt) for name, dt, shape in descr])
    written = 0
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
        np.lib.format.write_array_header_2_0(fh, header) if len(repr(header)) > 65000 else (
            np.lib.format.write_array_header_1_0(fh, header)
        )
        for batch in batches:
            m = len(next(iter(batch.values()))) if batch else 0
            rec = np.empty(m, dtype=dtype)
            for name, _, _ in descr:
                rec[name] = batch[name]
            fh.write(rec.tobytes())
            written += m
        if written != n:
            raise FormatError(f"{path}: internal error, wrote {written} rows, expected {n}")
