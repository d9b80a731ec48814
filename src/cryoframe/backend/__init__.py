"""Array-module selection: the ONLY place in cryoframe that imports cupy.

``get_array_module("cpu"|"gpu"|"auto")`` returns numpy or cupy; ``to_device``/``to_host`` move
arrays.  Without a GPU or without the ``[gpu]`` extra, ``"auto"`` falls back to numpy and
``"gpu"`` raises a clear error.  On the CPU: ``available_cores()``, ``thread_map`` and
``blas_threads(n)`` for code that runs its own threads.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np

from cryoframe.errors import CryoframeError

__all__ = ["available_cores", "blas_threads", "get_array_module", "gpu_available", "thread_map", "to_device",
           "to_host"]

log = logging.getLogger(__name__)


def _cupy() -> tuple[ModuleType | None, str]:
    """(cupy, "") when cupy imports and sees a CUDA device, else (None, why not)."""
    try:
        cp = importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or a broken install failing at import
        return None, f"cupy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = int(cp.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDARuntimeError: no driver, driver too old, no device...
        return None, f"CUDA runtime error ({type(exc).__name__}: {exc})"
    if n < 1:
        return None, "CUDA reports no GPU device"
    return cp, ""


def gpu_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    return _cupy()[0] is not None


def get_array_module(device: str = "cpu") -> ModuleType:
    """Return the array module for ``device`` ('cpu', 'gpu' or 'auto').

    ``auto`` falls back to numpy with a logged warning that says why (cupy's import error or the
    CUDA runtime error); ``gpu`` raises :class:`CryoframeError` with the same reason.
    """
    if device == "cpu":
        return np
    if device not in ("gpu", "auto"):
        raise CryoframeError(f"unknown device {device!r}: expected cpu, gpu or auto")
    cp, why = _cupy()
    if cp is None:
        if device == "auto":
            log.warning("--device auto: running on the CPU with NumPy because %s", why)
            return np
        raise CryoframeError(
            f"device 'gpu' needs a CUDA GPU and the [gpu] extra (pip install 'cryoframe[gpu]'): {why}"
        )
    return cp


def to_device(x: Any, xp: ModuleType) -> Any:
    """Move ``x`` to the array module ``xp`` (no copy when it is already there)."""
    if xp is np:
        return to_host(x)
    return xp.asarray(x)


def to_host(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array (copies from the GPU when needed)."""
    if hasattr(x, "get") and not isinstance(x, np.ndarray):
        return x.get()
    return np.asarray(x)


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_map(fn: Callable[[Any], Any], items: Iterable[Any], threads: int | None = None) -> list[Any]:
    """``[fn(x) for x in items]``, in ``threads`` threads (default: every available core, at most one
    per item), in order; in this thread when that is one.  For work that releases the GIL (NumPy on
    large arrays, FFTs, compiled ``nogil`` kernels)."""
    items = list(items)
    n = min(len(items), threads or available_cores())
    if n < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, items))


_blas_lock = threading.Lock()
_blas_state: dict[str, Any] = {"limit": None, "controller": None, "modules": -1}


def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, looked up again only when a module was
    imported since the last look (a BLAS is loaded by an import): the look walks every shared
    library of the process, 5 ms here, and a pose search enters :func:`blas_threads` on every call."""
    if _blas_state["modules"] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _blas_state["controller"] = ThreadpoolController()
        _blas_state["modules"] = len(sys.modules)
    return _blas_state["controller"]


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit the BLAS libraries (OpenBLAS, MKL, ...) to ``n`` threads each inside the block, for
    code that runs matrix products in its own threads (so ``t`` threads do not start ``t x cores``
    BLAS threads).  The limit is process-wide.  The block that sets it restores the libraries' own
    setting when it leaves, from its own thread (OpenBLAS 0.3.31 ignores a setting made from another
    thread after its main thread changed it); a block entered while another is active, nested or in
    another thread, changes nothing and runs under that limit while it lasts."""
    with _blas_lock:
        owner = _blas_state["limit"] is None
        if owner:
            _blas_state["limit"] = _blas_controller().limit(limits=n, user_api="blas")
    try:
        yield
    finally:
        if owner:
            with _blas_lock:
                _blas_state["limit"].restore_original_limits()
                _blas_state["limit"] = None
