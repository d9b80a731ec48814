"""The fused insertion kernel in a helper process, so that numba loads on the other core.

Importing numba and loading a cached kernel takes 0.5-0.8 s of pure-Python work in a fresh process
(numba's registries import scipy.linalg, among others).  In a thread it holds the GIL the job's own
start-up needs (imports, metadata, images), so for a short job such as ``cryoframe reconstruct`` of
a few thousand particles it is a third of the wall time.  :func:`prestart` (called by the CLI before
it imports the job) starts ``python -m cryoframe.geometry._kernel_worker``; the worker imports numba
and loads the kernel while the job starts, then inserts what the job sends it.

Protocol (pickles over the worker's stdin/stdout): ``("open", key, shape)`` starts a float32
accumulator of ``shape`` in its own worker thread (the kernel releases the GIL: the job's partitions
insert in parallel there as they would here), ``("insert", key, args)`` adds
:func:`cryoframe.geometry._kernels.insert_ctf_args` into it (acknowledged with ``("done", key)``: a
job keeps at most :data:`IN_FLIGHT` batches per accumulator in the pipe, so memory stays bounded by
the partition), ``("take", key)`` returns ``("sums", key, array)`` or ``("error", key, traceback)``.

The job side: :func:`active` is the running worker or None, :meth:`KernelWorker.sums` opens a
:class:`RemoteSums`.  A worker that dies (or cannot import numba) raises :class:`WorkerGone` in
every call waiting on it; callers then compute in-process.  ``CRYOFRAME_KERNEL_INPROCESS=1``
disables the worker.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import pickle
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np

from cryoframe._subprocess import kill, spawn_module
from cryoframe.geometry._kernels import HAVE_NUMBA

__all__ = ["IN_FLIGHT", "KernelWorker", "RemoteSums", "WorkerGone", "active", "prestart", "shutdown"]

IN_FLIGHT = 2
log = logging.getLogger(__name__)
_worker: KernelWorker | None = None


class WorkerGone(RuntimeError):
    """The kernel worker exited (or could not start): compute in this process instead."""


def prestart() -> KernelWorker | None:
    """Start the worker (once per process) unless numba is missing or ``CRYOFRAME_KERNEL_INPROCESS=1``."""
    global _worker
    if _worker is None and HAVE_NUMBA:
        proc = spawn_module("cryoframe.geometry._kernel_worker", disable_env="CRYOFRAME_KERNEL_INPROCESS")
        if proc is not None:
            _worker = KernelWorker(proc)
            atexit.register(_worker.close)
    return active()


def active() -> KernelWorker | None:
    """This process's running kernel worker, or None (not started, exited, or a Dask worker process)."""
    return _worker if _worker is not None and _worker.alive else None


def shutdown() -> None:
    """Stop this process's worker (tests; the CLI's exits at interpreter exit)."""
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None


class KernelWorker:
    """The job's end of a worker process: one sender lock, one reader thread routing the replies."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._send_lock = threading.Lock()
        self._state = threading.Lock()
        self._results: dict[int, Future[np.ndarray]] = {}
        self._credits: dict[int, threading.Semaphore] = {}
        self._keys = itertools.count()
        self.alive = True
        self._why = ""
        self._stderr: list[bytes] = []
        self._err_reader = threading.Thread(target=self._drain, name="cryoframe-kernel-stderr", daemon=True)
        self._err_reader.start()  # read at once: a worker must never block on a full stderr pipe
        threading.Thread(target=self._read, name="cryoframe-kernel-reader", daemon=True).start()

    def _drain(self) -> None:
        if self._proc.stderr is not None:
            self._stderr.append(self._proc.stderr.read() or b"")

    def _send(self, msg: tuple[Any, ...]) -> None:
        stdin = self._proc.stdin
        with self._send_lock:
            if not self.alive or stdin is None:
                raise WorkerGone(self._why or "the kernel worker has exited")
            try:
                pickle.dump(msg, stdin, protocol=pickle.HIGHEST_PROTOCOL)
                stdin.flush()
            except (OSError, ValueError) as exc:
                raise WorkerGone(f"the kernel worker has exited ({exc})") from None

    def _read(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            while True:
                kind, key, payload = pickle.load(stdout)
                if kind == "done":
                    self._credits[key].release()
                    continue
                with self._state:
                    fut = self._results.pop(key)
                    self._credits.pop(key, None)
                if kind == "sums":
                    fut.set_result(payload)
                else:
                    fut.set_exception(RuntimeError(f"kernel worker failed:\n{payload}"))
        except Exception:  # EOF or a broken pipe: the worker is gone
            self._fail()

    def _fail(self) -> None:
        self._err_reader.join(timeout=5)
        lines = b"".join(self._stderr).decode(errors="replace").strip().splitlines()
        self._why = f"the kernel worker has exited ({lines[-1] if lines else 'no message'})"
        self.alive = False
        with self._state:
            pending, self._results = self._results, {}
            credits, self._credits = self._credits, {}
        for fut in pending.values():
            fut.set_exception(WorkerGone(self._why))
        for sem in credits.values():  # wake senders waiting for room in the pipe
            sem.release(IN_FLIGHT + 1)

    def sums(self, shape: tuple[int, ...]) -> RemoteSums:
        """A new float32 accumulator of ``shape`` (zeros) in the worker."""
        key = next(self._keys)
        with self._state:
            self._results[key] = Future()
            self._credits[key] = threading.Semaphore(IN_FLIGHT)
        self._send(("open", key, tuple(shape)))
        return RemoteSums(self, key)

    def close(self) -> None:
        """Close the worker's input (it exits) and reap it."""
        if self._proc.poll() is None:
            with self._send_lock:
                self.alive = False
                stdin, self._proc.stdin = self._proc.stdin, None
                if stdin is not None:
                    try:
                        stdin.close()
                    except OSError:
                        pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill(self._proc)
        self.alive = False


class RemoteSums:
    """An accumulator in the worker: :meth:`insert_ctf` sends a batch, :meth:`result` returns the sums."""

    def __init__(self, worker: KernelWorker, key: int) -> None:
        self._w, self._key = worker, key
        self._credit = worker._credits[key]
        self._future = worker._results[key]

    def insert_ctf(self, rots: np.ndarray, kx: np.ndarray, ky: np.ndarray, flat: np.ndarray, images: np.ndarray,
                   params: tuple[np.ndarray, ...]) -> None:
        """Insert real ``images`` (n, b, b) at each pose set of ``rots`` (nsym, n, 3, 3), already times
        the padding (:func:`cryoframe.geometry.fourier.insert_images` with ``params`` from
        :func:`~cryoframe.geometry._kernels.insert_ctf_params`).  Returns at once
        unless :data:`IN_FLIGHT` batches are already waiting in the worker."""
        self._credit.acquire()
        self._w._send(("insert", self._key, (rots, kx, ky, flat, np.ascontiguousarray(images, np.float32), params)))

    def result(self) -> np.ndarray:
        """The float32 sums, once every batch sent is inserted (raises :class:`WorkerGone`)."""
        self._w._send(("take", self._key, None))
        return self._future.result()


def _lane(key: int, shape: tuple[int, ...], inbox: Any, reply: Any) -> None:
    from cryoframe.geometry.fourier import insert_images

    acc = np.zeros(shape, np.float32)
    err = None
    while True:
        kind, args = inbox.get()
        if kind != "insert":
            break
        if err is None:
            try:
                insert_images(acc, *args)  # (rots, kx, ky, flat, images, params)
            except Exception:
                import traceback

                err = traceback.format_exc()
        reply(("done", key, None))
    reply(("error", key, err) if err is not None else ("sums", key, acc))


def main() -> None:
    """The worker: load the kernel, then serve accumulators until the job closes stdin."""
    import os
    import queue

    from cryoframe.geometry._kernels import warm

    # numba's BLAS probe imports scipy.linalg, whose array-API layer walks dir(numpy) and so imports
    # numpy.f2py (and through it charset_normalizer, ...): 0.1 s of a 0.6 s start-up that this process,
    # which only ever runs the kernel, never uses.  An empty module stands in for it here.
    if "numpy.f2py" not in sys.modules:
        import types

        sys.modules["numpy.f2py"] = np.f2py = types.ModuleType("numpy.f2py")  # type: ignore[attr-defined]
    warm("insert_ctf")
    import scipy.fft  # noqa: F401 - the images' transforms (cryoframe.geometry.fourier.cfft2)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    out_lock = threading.Lock()

    def reply(msg: tuple[Any, ...]) -> None:
        with out_lock:
            pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()

    lanes: dict[int, queue.SimpleQueue[tuple[str, Any]]] = {}
    while True:
        try:
            kind, key, payload = pickle.load(inp)
        except EOFError:
            break
        if kind == "open":
            lanes[key] = queue.SimpleQueue()
            threading.Thread(target=_lane, args=(key, payload, lanes[key], reply), daemon=True).start()
        elif kind == "insert":
            lanes[key].put(("insert", payload))
        else:  # take
            lanes.pop(key).put(("take", None))
    out.flush()
    os._exit(0)  # the job has what it asked for; skip the interpreter's teardown


if __name__ == "__main__":
    main()
