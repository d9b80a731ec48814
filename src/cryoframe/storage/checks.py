"""Refusing particles whose data would poison a result (NaN or infinite pixels, CTF parameters,
poses): one message that names them, with rows, uids and the ``cryoframe query`` that leaves them out
(:func:`bad_particles`).  The image checks of a store's reads are
:func:`cryoframe.storage.store.check_finite`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from cryoframe.errors import InputError

__all__ = ["bad_particles", "nonfinite_images"]


class _Store(Protocol):
    """What :func:`bad_particles` needs of a store (a :class:`~cryoframe.storage.store.ParticleStore`)."""

    @property
    def path(self) -> Path: ...
    def table(self, columns: list[str]) -> Any: ...


def nonfinite_images(images: np.ndarray) -> np.ndarray:
    """Indices of the images (n, ...) holding a NaN or an infinity."""
    return np.flatnonzero(~np.isfinite(images).all(axis=tuple(range(1, images.ndim))))


def bad_particles(store: _Store | Path, bad: np.ndarray, problem: str, fix: str, start: int = 0) -> InputError:
    """The error for particles ``start + bad`` (0-based rows) of ``store`` that fail a check: their rows
    and uids (at most 5, and how many more), ``problem`` (what is wrong with them; ``{who}`` stands for
    the particles) and the ``cryoframe query`` that leaves them out after ``fix`` (what else the user can do).
    ``store`` a path: the store could not be opened, no uids."""
    rows = [int(start + i) for i in np.asarray(bad)[:5]]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    path = store if isinstance(store, Path) else store.path
    who, hint = f"particles {rows}{more} (0-based, store order)", "leave them out with `cryoframe query`"
    if not isinstance(store, Path):
        try:  # only on the error path: the uids a query can leave out
            uids = store.table(["uid"]).column(0).take(pa.array(rows)).to_pylist()
            who = f"particles {rows}{more} (0-based, store order; uid {uids})"
            hint = f"leave them out with `cryoframe query {path} --where 'uid not in {uids}'`"
        except Exception:  # noqa: BLE001, S110  # the message without uids rather than a second error
            pass
    return InputError(f"{path}: {problem.format(who=who)}; {fix}, or {hint}")
