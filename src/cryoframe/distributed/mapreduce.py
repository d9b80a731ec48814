"""Map a function over the partitions of a dask collection and tree-reduce the results.

The one pattern every distributed estimator and job in cryoframe follows: each partition (a block
of particles) returns partial sums — sufficient statistics — and a reduction tree of fan-in
``fan_in`` adds them up, so neither the driver nor any worker ever holds more than ``fan_in``
partial results, and memory is bounded by the partition size, not by the number of particles.

Users: the 1-D Gaussian mixture (each partition returns a (3K+1,) float64 vector of E-step
statistics, summed), Class2D (each partition returns M-step statistics and its particles' poses,
combined by :func:`cryoframe.algorithms.class2d.estep.combine`) and, by design, 3D jobs: a
reconstruction or 3D classification pass maps the back-projection of each partition's particles
(their poses and CTFs passed as ``per_rows``) into partial Fourier volumes — a numerator
``sum CTF * F(image)`` and a weight ``sum CTF**2`` of shape (K, D, D, D//2+1) — and tree-sums them::

    from cryoframe.distributed.mapreduce import map_partitions, sum_reduce

    num, den = map_partitions(backproject_partition, store.images(finite=True), model, chunk=512,
                              per_rows=[ctf_params, poses], reduce=sum_reduce)

The result is computed with whatever scheduler is active (``cryoframe.distributed.scheduler``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["compute", "map_partitions", "sum_reduce", "tree_reduce"]


def compute(*graphs: Any) -> tuple[Any, ...]:
    """``dask.compute(*graphs)`` with the active scheduler.  When none is configured and
    ``distributed`` was never imported (so no Client can exist), the local scheduler configured by
    name (threads -- dask's default --, processes, synchronous) is passed as its callable: dask would
    otherwise import ``distributed`` (about 0.25 s, a quarter of a small job's start-up) only to
    find that there is no client."""
    import sys

    import dask

    name = dask.config.get("scheduler", None)
    if "distributed" not in sys.modules and (name is None or isinstance(name, str)):
        # callables: a scheduler *name* makes dask import distributed to look for a client
        from dask.base import named_schedulers

        get = named_schedulers.get("threads" if name is None else name.lower())
        if get is not None:
            return tuple(dask.compute(*graphs, scheduler=get))
    return tuple(dask.compute(*graphs))

FAN_IN = 8


def sum_reduce(*parts: Any) -> Any:
    """Element-wise sum of partition results: arrays, or tuples/lists/dicts of arrays (float64
    accumulation is the caller's choice of dtype; the first part is copied, never modified)."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: sum_reduce(*(p[k] for p in parts)) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(sum_reduce(*items) for items in zip(*parts, strict=True))
    out = np.array(first, copy=True)
    for p in parts[1:]:
        out += p
    return out


def tree_reduce(parts: Sequence[Any], combine: Callable[..., Any], fan_in: int = FAN_IN) -> Any:
    """One delayed object: ``combine`` applied over groups of at most ``fan_in`` delayed ``parts``,
    level by level, until one remains.  ``combine(*results)`` must be associative (order is kept)."""
    import dask

    if not parts:
        raise ValueError("tree_reduce needs at least one partition")
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    level = list(parts)
    while len(level) > 1:
        level = [dask.delayed(combine, pure=True)(*level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    return level[0]


def _slice_rows(x: Any, s: int, m: int) -> Any:
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: v[s : s + m] for k, v in x.items()}
    return x[s : s + m]


def _partitions(data: Any, chunk: int | None) -> tuple[list[Any], list[int] | None]:
    """Delayed partitions of ``data`` and their row counts (None when unknown)."""
    import dask
    import dask.array as da

    if isinstance(data, da.Array):
        if chunk is not None:
            data = data.rechunk({0: int(chunk), **{a: -1 for a in range(1, data.ndim)}})
        elif data.ndim > 1 and any(len(c) > 1 for c in data.chunks[1:]):
            data = data.rechunk({a: -1 for a in range(1, data.ndim)})
        return list(data.to_delayed().ravel()), [int(m) for m in data.chunks[0]]
    if dask.is_dask_collection(data) and hasattr(data, "to_delayed"):  # dask DataFrame / Series / Bag
        return list(data.to_delayed()), None
    if isinstance(data, Sequence):  # already a list of (delayed) partitions
        return list(data), None
    raise TypeError(f"map_partitions needs a dask array, a dask dataframe or a list of partitions, "
                    f"got {type(data).__name__}")


def map_partitions(fn: Callable[..., Any], data: Any, *args: Any, per_rows: Sequence[Any] = (),
                   reduce: Callable[..., Any] | None = None, fan_in: int = FAN_IN, chunk: int | None = None,
                   compute: bool = True) -> Any:
    """Call ``fn(partition, *row_slices, *args)`` on every partition of ``data``; tree-reduce.

    ``data``: a dask array (partitions along axis 0, re-chunked to ``chunk`` rows when given, other
    axes whole), a dask DataFrame/Series (its partitions) or a list of partitions (delayed objects
    or values).  ``per_rows``: per-row inputs — arrays, dicts of arrays (each value sliced) or None —
    of which each partition receives its own rows (dask arrays only: other inputs have no known
    row counts).  ``args``: shared inputs; NumPy arrays and dicts enter the graph once, not once
    per partition.  ``reduce``: None returns the list of partition results in order; otherwise
    ``reduce(*results)`` (associative, e.g. :func:`sum_reduce`) is applied as a tree of fan-in
    ``fan_in`` and its single result returned.  ``compute=False`` returns the delayed object(s).
    """
    import dask

    parts, lengths = _partitions(data, chunk)
    if per_rows and lengths is None:
        raise ValueError("per_rows needs a dask array input (row counts of the partitions)")
    shared = tuple(dask.delayed(a, pure=True) if isinstance(a, dict | np.ndarray) else a for a in args)
    tasks, s = [], 0
    for i, part in enumerate(parts):
        m = lengths[i] if lengths is not None else 0
        rows = [_slice_rows(r, s, m) for r in per_rows]
        tasks.append(dask.delayed(fn, pure=True)(part, *rows, *shared))
        s += m
    if reduce is None:
        return list(_compute(*tasks)) if compute else tasks
    out = tree_reduce(tasks, reduce, fan_in)
    return _compute(out)[0] if compute else out


_compute = compute  # map_partitions' own ``compute`` flag shadows the name there
