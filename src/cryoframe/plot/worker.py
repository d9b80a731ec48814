"""Draw a job's plots in a second Python process, started when the job starts.

Importing matplotlib (~0.5 s) and drawing a few figures (~0.15 s each) cost more than a whole
``subset`` of 5e6 particles does without them, and in-process they hold the GIL the job's own
NumPy/Arrow work needs.  :class:`PlotWorker` starts ``python -m cryoframe.plot.worker`` at once
(it imports matplotlib and :mod:`cryoframe.plot.quick` on another core while the job reads and
fits), then receives the figures to draw -- calls of :mod:`cryoframe.plot.quick` functions with
their (small) data -- and draws them while the job writes its outputs.  The job waits for it
before its output directory is renamed into place, so the plots are part of the atomic output; a
failure in the worker is raised in the job with the worker's own message.  With ``CRYOFRAME_PLOT_
INPROCESS=1`` (or where a subprocess cannot start) the same calls run in-process.  A CLI verb may
:func:`prestart` the worker before it imports its job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from cryoframe._subprocess import kill, spawn_module

__all__ = ["PlotWorker", "prestart"]

_FUNCS = ("histogram_png", "viewing_png")
log = logging.getLogger(__name__)
_prestarted: subprocess.Popen[bytes] | None = None


def _spawn() -> subprocess.Popen[bytes] | None:
    return spawn_module("cryoframe.plot.worker", disable_env="CRYOFRAME_PLOT_INPROCESS")


def prestart() -> None:
    """Start the worker now, for the next :class:`PlotWorker` to adopt (a CLI verb calls this before
    importing its job, so matplotlib loads in parallel with that import too); killed at exit if unused."""
    global _prestarted
    if _prestarted is None:
        _prestarted = _spawn()
        if _prestarted is not None:
            import atexit

            atexit.register(kill, _prestarted)


def _draw(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    from cryoframe.plot import quick

    written: list[str] = []
    for name, kwargs in calls:
        if name not in _FUNCS:
            raise ValueError(f"unknown plot function {name!r}")
        written += [Path(p).name for p in getattr(quick, name)(**kwargs)]
    return written


class PlotWorker:
    """A plotting process started now; :meth:`draw` hands it the figures, :meth:`wait` collects the
    names of the files written.  Use as a context manager: leaving the block early kills it."""

    def __init__(self) -> None:
        self._calls: list[tuple[str, dict[str, Any]]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        global _prestarted
        if _prestarted is not None and _prestarted.poll() is None:
            self._proc, _prestarted = _prestarted, None
        else:
            self._proc = _spawn()
        if self._proc is not None:  # a writer thread: the job never blocks on a pipe the worker is not reading yet
            self._writer = threading.Thread(target=self._feed, args=(self._proc,), name="cryoframe-plot-feed",
                                            daemon=True)
            self._writer.start()

    def __enter__(self) -> PlotWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _feed(self, proc: subprocess.Popen[bytes]) -> None:
        stdin = proc.stdin
        assert stdin is not None
        try:
            while (call := self._queue.get()) is not None:
                pickle.dump(call, stdin, protocol=pickle.HIGHEST_PROTOCOL)
                stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the worker died (wait() reports its stderr) or was killed (close())
        finally:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()

    def add(self, func: str, **kwargs: Any) -> None:
        """Draw ``cryoframe.plot.quick.<func>(**kwargs)``: handed to the worker at once and drawn
        while the caller goes on (in-process mode: at :meth:`wait`)."""
        if func not in _FUNCS:
            raise ValueError(f"unknown plot function {func!r}")
        self._calls.append((func, kwargs))  # kept: drawn here if the worker cannot draw them
        if self._proc is not None:
            self._queue.put((func, kwargs))

    def wait(self) -> list[str]:
        """Names of the files written, once every figure is drawn (raises the worker's error)."""
        if self._proc is None:
            return _draw(self._calls)
        self._queue.put(None)
        assert self._writer is not None
        self._writer.join()
        self._proc.stdin = None  # closed by the writer; communicate() must not flush it
        out, err = self._proc.communicate()
        if self._proc.returncode != 0:
            msg = err.decode(errors="replace").strip().splitlines()
            why = msg[-1] if msg else f"exit {self._proc.returncode}"
            if "ModuleNotFoundError" in why or "ImportError" in why:  # the worker could not start: draw here
                log.warning("plot worker could not start (%s); drawing in this process", why)
                return _draw(self._calls)
            raise RuntimeError(f"plot worker failed: {why}")
        names: list[str] = json.loads(out.decode())
        return names

    def close(self) -> None:
        """Stop the worker if it is still running (the job failed before :meth:`wait`)."""
        if self._proc is not None and self._proc.poll() is None:
            self._queue.put(None)
            kill(self._proc)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colors  # noqa: F401 - warm every module the figures use before the data arrive
    from matplotlib.backends import backend_agg  # noqa: F401
    from matplotlib.figure import Figure

    from cryoframe.plot import quick  # noqa: F401

    Figure()  # font manager and rcParams loaded now, not after the data arrive
    written: list[str] = []
    while True:  # one pickled (function, kwargs) per figure, drawn as it arrives, until the job closes stdin
        try:
            call = pickle.load(sys.stdin.buffer)
        except EOFError:
            break
        written += _draw([call])
    sys.stdout.write(json.dumps(written))
    sys.stdout.flush()
    os._exit(0)  # every file is written and closed: skip the interpreter's teardown (matplotlib's is slow)


if __name__ == "__main__":
    main()
