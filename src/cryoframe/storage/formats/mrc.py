"""MRC/MRCS image stacks through ``mrcfile``: header checks, memory-mapped range reads, stack writes."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from cryoframe.errors import FormatError
from cryoframe.storage.atomic import atomic_path

__all__ = ["StackReader", "stack_header", "write_stack"]


def stack_header(path: str | os.PathLike[str]) -> tuple[int, int, int, float]:
    """(n_images, ny, nx, voxel size Å or 0) of an MRC/MRCS file, reading only its header."""
    import mrcfile

    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: image stack not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(p, mode="r", header_only=True, permissive=True) as m:
                h = m.header
                nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
                vs = float(m.voxel_size.x)
    except Exception as exc:
        raise FormatError(f"{p}: not a readable MRC stack ({exc})") from exc
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise FormatError(f"{p}: bad MRC header dimensions ({nz}, {ny}, {nx})")
    expected = 1024 + int(getattr(h, "next", 0)) + nx * ny * nz * _mode_itemsize(int(h.mode), p)
    if p.stat().st_size < expected:
        raise FormatError(f"{p}: truncated MRC stack ({p.stat().st_size} bytes, header promises {expected})")
    return nz, ny, nx, vs


def _mode_itemsize(mode: int, p: Path) -> int:
    sizes = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}
    if mode not in sizes:
        raise FormatError(f"{p}: unsupported MRC mode {mode} (expected 0, 1, 2, 6 or 12)")
    return sizes[mode]


class _MappedStack(Protocol):
    """What :class:`StackReader` uses of an ``mrcfile.mmap`` object (mrcfile ships no type stubs)."""

    data: np.ndarray

    def close(self) -> None: ...


class StackReader:
    """Reads images by index from many stacks, keeping at most ``max_open`` memory maps open."""

    def __init__(self, max_open: int = 32) -> None:
        self._open: OrderedDict[Path, _MappedStack] = OrderedDict()
        self.max_open = max_open

    def _get(self, path: Path) -> np.ndarray:
        import mrcfile

        m = self._open.get(path)
        if m is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = mrcfile.mmap(path, mode="r", permissive=True)
            except Exception as exc:
                raise FormatError(f"{path}: cannot open image stack ({exc})") from exc
            self._open[path] = m
            if len(self._open) > self.max_open:
                _, old = self._open.popitem(last=False)
                old.close()
        else:
            self._open.move_to_end(path)
        data = m.data
        return data if data.ndim == 3 else data[None]

    def read(self, path: Path, idx: np.ndarray) -> np.ndarray:
        """Images ``idx`` (0-based) of ``path`` as float32 (n, ny, nx)."""
        data = self._get(path)
        if len(idx) and int(idx.max()) >= data.shape[0]:
            raise FormatError(f"{path}: image index {int(idx.max())} past the end of the stack ({data.shape[0]} images)")
        return np.asarray(data[idx], dtype=np.float32)

    def close(self) -> None:
        for m in self._open.values():
            m.close()
        self._open.clear()


def write_stack(
    path: str | os.PathLike[str], n: int, box: int, blocks: Iterable[np.ndarray], psize_A: float | None = None
) -> None:
    """Write an (n, box, box) float32 MRCS stack from consecutive blocks (temp file + rename)."""
    import mrcfile

    path = Path(path)
    with atomic_path(path) as tmp, mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True) as m:
        m.set_image_stack()
        i = 0
        for b in blocks:
            m.data[i : i + len(b)] = b
            i += len(b)
        if i != n:
            raise FormatError(f"{path}: internal error, wrote {i} images, expected {n}")
        if psize_A:
            m.voxel_size = float(psize_A)
        m.update_header_stats()
