"""``backend.blas_threads``: the BLAS limit holds inside the block, a block overlapping it (nested or
in another thread) runs under it, and the libraries' own setting comes back when the first leaves."""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_info

from cryoframe.backend import available_cores, blas_threads, thread_map


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_limit_inside_and_restored_after() -> None:
    before = _blas_threads()
    assert before, "numpy links a BLAS that threadpoolctl sees"
    with blas_threads(1):
        assert set(_blas_threads()) == {1}
        with blas_threads(1):  # nested: still limited, and the outer block still restores
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before


def test_a_block_overlapping_in_another_thread_leaves_the_setting_to_the_first() -> None:
    """The first block sets the limit and restores it when it leaves, in its own thread; a block
    entered meanwhile in another thread runs under it and changes nothing when it leaves."""
    before = _blas_threads()
    inside = threading.Event()
    release = threading.Event()
    seen: list[list[int]] = []

    def worker() -> None:
        with blas_threads(1):
            seen.append(_blas_threads())
            inside.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    with blas_threads(1):
        t.start()
        assert inside.wait(10)
    assert _blas_threads() == before  # restored by the block that set it
    release.set()
    t.join(10)
    assert seen and set(seen[0]) == {1}
    assert _blas_threads() == before
    with blas_threads(1):  # and the next block sets it again
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before


def test_available_cores_is_positive() -> None:
    assert 1 <= available_cores() <= (__import__("os").cpu_count() or 1)


def test_thread_map_keeps_the_order_and_uses_the_threads_it_is_given() -> None:
    barrier = threading.Barrier(2, timeout=10)

    def both(x: int) -> tuple[int, int]:
        barrier.wait()  # returns only when two calls run at the same time
        return x * x, threading.get_ident()

    out = thread_map(both, [3, 1, 2, 5], threads=2)
    assert [v for v, _ in out] == [9, 1, 4, 25]
    assert len({t for _, t in out}) == 2
    here = threading.get_ident()
    assert thread_map(lambda x: (x + 1, threading.get_ident()), range(3), threads=1) == [(1, here), (2, here), (3, here)]
    assert thread_map(str, []) == []


def test_a_blas_loaded_by_a_later_import_is_limited_too() -> None:
    """The view of the loaded libraries is kept between blocks (looking costs ms per pose search), but
    looked at again after an import: scipy.linalg loads its own OpenBLAS beside numpy's."""
    import subprocess
    import sys

    code = """
import sys
from threadpoolctl import threadpool_info
from cryoframe import backend
def blas():
    return {l["filepath"]: l["num_threads"] for l in threadpool_info() if l["user_api"] == "blas"}
assert "scipy.linalg" not in sys.modules
with backend.blas_threads(1):
    first = backend._blas_state["controller"]
with backend.blas_threads(1):
    assert backend._blas_state["controller"] is first  # no import between: the same view
n0 = len(blas())
import scipy.linalg
assert len(blas()) == n0 + 1, blas()
with backend.blas_threads(1):
    assert backend._blas_state["controller"] is not first
    assert set(blas().values()) == {1}, blas()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
