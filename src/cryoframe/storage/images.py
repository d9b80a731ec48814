"""Streaming image import: particle stacks named by (path, index) -> the store's Zarr array.

Two passes, both chunked: first every referenced stack's header is checked (exists, index in
range, one square box size for all), then images are copied chunk by chunk (chunks aligned to
the Zarr chunks, a small thread pool), so peak memory is a few chunks whatever N is.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cryoframe.errors import FormatError
from cryoframe.storage.checks import nonfinite_images
from cryoframe.storage.convert import strip_path_prefix
from cryoframe.storage.formats.mrc import StackReader, stack_header
from cryoframe.storage.store import StoreWriter

__all__ = ["BlobSource", "import_images", "resolve_base"]

log = logging.getLogger(__name__)

BlobSource = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
"""(start, stop) -> (paths as str objects, 0-based indices) of those particles."""


def resolve_base(first_path: str, candidates: Sequence[Path], source: str, field: str) -> Path:
    """The first candidate base directory under which ``first_path`` exists."""
    rel = strip_path_prefix(first_path)
    if os.path.isabs(rel):
        return Path("/")
    for base in candidates:
        if (base / rel).is_file():
            return base
    tried = ", ".join(str(b) for b in candidates)
    raise FormatError(
        f"{source}: image file {rel!r} named by {field} not found under {tried} "
        f"(pass --project-dir, or --metadata-only to skip images)"
    )


def import_images(
    writer: StoreWriter,
    n: int,
    blobs: BlobSource,
    base: Path,
    source: str,
    field: str,
    expected_box: int | None = None,
    workers: int = 2,
) -> tuple[int, float]:
    """Copy the images of ``n`` particles into ``writer``; returns (box px, header voxel size Å)."""
    scan = 1 << 20
    max_idx: dict[str, int] = {}
    for a in range(0, n, scan):
        paths, idx = blobs(a, min(n, a + scan))
        up, inv = np.unique(paths.astype(str), return_inverse=True)
        mx = np.full(len(up), -1, dtype=np.int64)
        np.maximum.at(mx, inv, idx.astype(np.int64))
        for p, m in zip(up, mx, strict=True):
            max_idx[p] = max(max_idx.get(p, -1), int(m))
    box = None
    first = None
    vs = 0.0
    resolved: dict[str, Path] = {}
    for p, rel, last in zip(max_idx, strip_path_prefix(list(max_idx)), max_idx.values(), strict=True):
        full = base / rel
        if not full.is_file():
            raise FormatError(f"{source}: image file {str(full)!r} named by {field} not found")
        nz, ny, nx, v = stack_header(full)
        if last >= nz:
            raise FormatError(
                f"{source}: {field} index {last} (0-based) is past the end of {full} ({nz} images)"
            )
        if ny != nx:
            raise FormatError(f"{full}: images are {ny}x{nx}; only square boxes are supported")
        if box is None:
            box, first, vs = nx, full, v
        elif nx != box:
            raise FormatError(f"mismatched box sizes: {first} has {box} px images, {full} has {nx} px")
        resolved[p] = full
    if box is None:
        raise FormatError(f"{source}: no images referenced")
    if expected_box is not None and expected_box != box:
        raise FormatError(f"{source}: blob/shape says {expected_box} px but the stacks hold {box} px images")
    arr = writer.create_images(n, box)
    rows = arr.chunks[0]
    local = threading.local()
    readers: list[StackReader] = []

    def copy(a: int) -> None:
        r = getattr(local, "reader", None)
        if r is None:
            r = local.reader = StackReader()
            readers.append(r)
        b = min(n, a + rows)
        paths, idx = blobs(a, b)
        paths = paths.astype(str)
        block = np.empty((b - a, box, box), dtype=np.float32)
        for p in np.unique(paths):
            sel = np.nonzero(paths == p)[0]
            block[sel] = r.read(resolved[p], idx[sel].astype(np.int64))
            bad = nonfinite_images(block[sel])
            if len(bad):  # one NaN pixel turns every later map and score into NaN
                first = [int(i) + 1 for i in idx[sel][bad][:5]]
                raise FormatError(f"{resolved[p]}: the images at positions {first} of this stack (1-based; named by "
                                  f"{field} in {source}) hold NaN or infinite pixels; expected finite values")
        arr[a:b] = block

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = 0
            for _ in pool.map(copy, range(0, n, rows)):
                done += 1
                if done % 50 == 0:
                    log.info("images: %d / %d particles", min(n, done * rows), n)
    finally:
        for r in readers:
            r.close()
    return box, vs
