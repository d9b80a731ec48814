"""Progress reporting that works with whichever scheduler is active.

Local schedulers (threads, processes, synchronous) report through ``dask.diagnostics.ProgressBar``,
a callback registered for the duration of ``progress_context``; it cannot see a
``distributed.Client``, so with a Client ``show_progress`` persists the collections and draws
``distributed.progress``.  Bars go to stderr so stdout stays clean for results.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["current_client", "progress_context", "show_progress"]

_LOCAL = {"threads", "threading", "processes", "multiprocessing", "synchronous", "sync", "single-threaded"}


def current_client() -> Client | None:
    """The ``distributed.Client`` that ``dask.compute`` would use now, or None for a local scheduler."""
    if "distributed" not in sys.modules:  # no Client can exist (and dask need not be imported to say so)
        return None
    import dask

    if str(dask.config.get("scheduler", None)) in _LOCAL:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


@contextlib.contextmanager
def progress_context(quiet: bool = False, *, minimum: float = 1.0) -> Iterator[None]:
    """Show a progress bar on stderr for local-scheduler computes that take over ``minimum`` s.

    With a distributed Client active (or ``quiet``) nothing is registered: call ``show_progress``
    on what you are about to compute instead.
    """
    if quiet or current_client() is not None:
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(minimum=minimum, out=sys.stderr):
        yield


def show_progress(collections: Any, *, quiet: bool = False) -> Any:
    """Persist dask collections on the active Client and block with a progress bar until they finish.

    Takes one collection/future or a list/tuple of them and returns the same shape with collections
    replaced by their persisted versions (compute them as usual; the work is done).  Without a
    Client it returns the input unchanged: the ``progress_context`` bar reports at compute time.
    """
    client = current_client()
    if client is None:
        return collections
    import dask
    from distributed import progress, wait

    single = not isinstance(collections, (list, tuple))
    items = [collections] if single else list(collections)
    persisted = [client.persist(c) if dask.is_dask_collection(c) else c for c in items]
    if quiet:
        wait(persisted)
    else:
        with contextlib.redirect_stdout(sys.stderr):  # the text bar writes to stdout and erases itself
            progress(persisted, notebook=False)
    if single:
        return persisted[0]
    return type(collections)(persisted)
