"""The Python API behind every CLI verb: one function per verb, callable from notebooks.

>>> from cryoframe import api
>>> store = api.import_("J24_particles.cs", "j24.cf", passthrough=["P_passthrough.cs"], project_dir="/cs/P12")
>>> hard = api.query("j24.cf", "`ctf/df1_A` < 15000 and `alignments3D/error` > 3", out="hard.cf")
>>> api.export(hard, "hard.star", format="star")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryoframe.errors import InputError
from cryoframe.query.expr import filter_store, filter_table, query_frame
from cryoframe.schema import field_spec
from cryoframe.storage.exporters import export_cs, export_star
from cryoframe.storage.importers import import_file
from cryoframe.storage.store import ParticleStore

__all__ = ["class2d", "demo", "export", "import_", "info", "open_store", "query", "select2d", "stats", "subset", "synth", "view"]

PathLike = str | os.PathLike[str]
StoreLike = PathLike | ParticleStore


def _scheduler(spec: str | None) -> Any:
    """The scheduler context for ``spec`` (None: whatever is active, else threads)."""
    if spec is None:
        import contextlib

        return contextlib.nullcontext()
    from cryoframe.distributed import scheduler

    return scheduler(spec)


def open_store(store: StoreLike) -> ParticleStore:
    """A :class:`ParticleStore` from a path (or the store itself)."""
    return store if isinstance(store, ParticleStore) else ParticleStore(store)


def import_(
    path: PathLike,
    out: PathLike,
    *,
    passthrough: Sequence[PathLike] = (),
    project_dir: PathLike | None = None,
    metadata_only: bool = False,
    psize_A: float | None = None,
    overwrite: bool = False,
) -> ParticleStore:
    """Import a ``.cs`` (with passthroughs), ``.star`` or ``.mrcs`` file into a new store at ``out``."""
    kw: dict[str, Any] = {"overwrite": overwrite}
    suffix = Path(path).suffix.lower()
    if suffix == ".cs":
        kw.update(passthrough=list(passthrough), project_dir=project_dir, metadata_only=metadata_only)
    elif suffix == ".star":
        if passthrough:
            raise InputError("--passthrough applies to .cs imports only")
        kw.update(project_dir=project_dir, metadata_only=metadata_only)
    else:
        if passthrough:
            raise InputError("--passthrough applies to .cs imports only")
        kw.update(psize_A=psize_A)
    return import_file(path, out, **kw)


def info(store: StoreLike) -> dict[str, Any]:
    """Summary of a store: counts, box, pixel size, fields (dtype, unit), images, optics, lineage."""
    s = open_store(store)
    man = s.manifest
    fields = []
    for f in man["fields"]:
        if f["name"].startswith("_"):
            continue
        spec = field_spec(f["name"])
        fields.append({"name": f["name"], "dtype": f["numpy_dtype"], "shape": f["shape"],
                       "unit": spec.unit if spec else None})
    images = None
    if s.has_images:
        z = s.image_array()
        images = {"path": str(s.images_path()), "shape": list(z.shape), "chunks": list(z.chunks),
                  "dtype": str(z.dtype), "shared_with_parent": not man["images"].get("owner", True)}
    opt = s.optics()
    return {
        "path": str(s.path),
        "n_particles": s.n,
        "box_px": s.box,
        "psize_A": s.psize_A,
        "content_hash": s.content_hash,
        "source": man.get("source"),
        "images": images,
        "optics_groups": None if opt is None else opt.num_rows,
        "fields": fields,
        "lineage": man.get("lineage", []),
    }


def query(
    store: StoreLike,
    where: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    out: PathLike | None = None,
    head: int | None = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    join: Sequence[StoreLike] = (),
) -> Any:
    """Filter with a pandas ``query`` expression (backticks around ``group/field`` names).

    ``join``: further stores joined on uid first (fields present in several stores are
    suffixed ``@<store name>``), so one question can span a 2D job, a 3D job and the picks.

    With ``out`` a new store referencing the parent's images is written and returned; otherwise
    a pandas DataFrame of the first ``head`` matching rows (all when ``head`` is None).
    """
    s = open_store(store)
    if join:
        from cryoframe.query.join import join_stores

        return join_stores([s, *[open_store(j) for j in join]], out, where, columns, head=head, overwrite=overwrite)
    with _scheduler(scheduler):
        if out is not None:
            return filter_store(s, out, where, columns, overwrite=overwrite)
        import pandas as pd

        query_frame(s, where, columns)  # validates field names and syntax with pandas' rules
        t = filter_table(s, where, columns)
        if head is not None:
            t = t.slice(0, head)
        return t.to_pandas(types_mapper=pd.ArrowDtype)


def export(store: StoreLike, out: PathLike, *, format: str | None = None, images: bool = False,
           extra_fields: bool = True, overwrite: bool = False) -> Path:
    """Export to ``.cs`` or ``.star`` (``format`` defaults to ``out``'s suffix)."""
    s = open_store(store)
    fmt = (format or Path(out).suffix.lstrip(".")).lower()
    if fmt == "cs":
        return export_cs(s, out, images=images, overwrite=overwrite)
    if fmt == "star":
        return export_star(s, out, images=images, extra_fields=extra_fields, overwrite=overwrite)
    raise InputError(f"unknown export format {fmt!r}: expected cs or star")


def synth(out: PathLike, **kwargs: Any) -> ParticleStore:
    """Write a deterministic synthetic store with ground truth (see :mod:`cryoframe.testing`)."""
    from cryoframe.testing import synth_store

    return synth_store(out, **kwargs)


def demo(workdir: PathLike | None = None, *, n: int = 2000, box: int = 64, seed: int = 0) -> dict[str, Any]:
    """Run the end-to-end tour on synthetic data; returns what was done and where the files are."""
    from cryoframe.demo import run_demo

    return run_demo(workdir, n=n, box=box, seed=seed)


def stats(store: StoreLike, by: str | None = None, *, initial: StoreLike | None = None,
          class_indices: Sequence[int] | None = None, class_agg: str = "sum",
          project_dir: PathLike | None = None, scheduler: str | None = None) -> dict[str, Any]:
    """Summary of statistic ``by`` (count, missing, mean, std, quantiles) and the statistics this
    store can provide."""
    from cryoframe.query.stats import (
        available_statistics,
        describe_values,
        resolve_statistic,
        statistic_values,
    )

    s = open_store(store)
    out: dict[str, Any] = {"store": str(s.path), "n_particles": s.n, "available": available_statistics(s)}
    if by is not None:
        st, fields = resolve_statistic(by, s)
        frame = statistic_values(s, by, initial=open_store(initial) if initial is not None else None,
                                 class_indices=class_indices, class_agg=class_agg,
                                 project_dir=str(project_dir) if project_dir else None)
        with _scheduler(scheduler):
            v = frame["value"].compute().to_numpy(dtype="float64")
        out.update(statistic=by, fields=fields, unit=st.unit, description=st.description,
                   summary=describe_values(v))
    return out


def subset(store: StoreLike, out: PathLike, *, by: str, mode: str = "gmm", components: int = 2,
           min_prob: float | None = None, thresholds: Sequence[float] = (), initial: StoreLike | None = None,
           class_indices: Sequence[int] | None = None, class_agg: str = "sum", on_missing: str = "error",
           format: str | None = None, project_dir: PathLike | None = None, seed: int = 0, tol: float = 1e-3,
           max_iter: int = 100, plots: bool = True, device: str = "cpu", overwrite: bool = False,
           scheduler: str | None = None) -> Any:
    """Subset particles by statistic (GMM or thresholds); returns a :class:`cryoframe.jobs.SubsetResult`
    with ``sets`` (stores, low to high mean), ``dropped``, ``summary`` and the fitted ``model``."""
    from cryoframe.jobs.subset import subset as _subset

    with _scheduler(scheduler):
        return _subset(open_store(store), out, by=by, mode=mode, components=components, min_prob=min_prob,
                       thresholds=thresholds, initial=open_store(initial) if initial is not None else None,
                       class_indices=class_indices, class_agg=class_agg, on_missing=on_missing,
                       export_format=format, project_dir=str(project_dir) if project_dir else None, seed=seed,
                       tol=tol, max_iter=max_iter, plots=plots, device=device, overwrite=overwrite)


def class2d(store: StoreLike, out: PathLike, *, scheduler: str | None = None, **kwargs: Any) -> ParticleStore:
    """2D classification (see :func:`cryoframe.jobs.class2d.class2d` for the parameters)."""
    from cryoframe.jobs.class2d import class2d as _class2d

    with _scheduler(scheduler):
        return _class2d(open_store(store), out, **kwargs)


def select2d(store: StoreLike, out: PathLike, *, classes: Sequence[int] | None = None, auto: bool = False,
             threshold: float = 0.25, regroup: int | None = None, overwrite: bool = False) -> ParticleStore:
    """Keep the particles of chosen or auto-selected 2D classes (a store referencing the images)."""
    from cryoframe.jobs.class2d import select2d as _select2d

    return _select2d(open_store(store), out, classes=list(classes) if classes else None, auto=auto,
                     threshold=threshold, regroup=regroup, overwrite=overwrite)


def view(store: StoreLike, *, join: Sequence[StoreLike] = (), save_dir: PathLike | None = None, serve: bool = False,
         port: int = 5006, address: str = "127.0.0.1", show: bool = True) -> Any:
    """The interactive curation page (a Panel layout, shown inline in a notebook) for ``store``
    (``join``: further stores joined on uid); the save button writes into ``save_dir`` (default: cwd).

    ``serve=True`` serves it at http://ADDRESS:PORT/ instead and blocks (``cryoframe view``).
    """
    from cryoframe.view.server import make_data
    from cryoframe.view.server import serve as _serve

    data = make_data(open_store(store), [open_store(j) for j in join])
    if serve:
        return _serve(data, port=port, address=address, show=show, save_dir=save_dir)
    from cryoframe.view.app import CurationApp

    return CurationApp(data, save_dir=save_dir).layout
