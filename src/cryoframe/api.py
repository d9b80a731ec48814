"""The Python API behind every CLI verb: one function per verb, callable from notebooks.

>>> from cryoframe import api
>>> store = api.import_("J24_particles.cs", "j24.cf", passthrough=["P_passthrough.cs"], project_dir="/cs/P12")
>>> hard = api.query("j24.cf", "`ctf/df1_A` < 15000 and `alignments3D/error` > 3", out="hard.cf")
>>> api.export(hard, "hard.star", format="star")
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from cryoframe.errors import InputError
from cryoframe.query.expr import filter_table, query_frame
from cryoframe.schema import field_spec
from cryoframe.storage.store import ParticleStore
from cryoframe.types import (
    Class2DAlgorithm,
    Class2DInit,
    Class2DScale,
    ClassAgg,
    CtfMode,
    Device,
    ExportFormat,
    OnMissing,
    PathLike,
    SubsetMode,
    SynthKind,
    check_seed,
)

if TYPE_CHECKING:
    import pandas as pd

    from cryoframe.jobs.subset import SubsetResult

__all__ = [
    "PathLike",
    "StoreLike",
    "abinitio",
    "class2d",
    "class3d",
    "demo",
    "export",
    "import_",
    "info",
    "mask",
    "materialize",
    "open_store",
    "project",
    "query",
    "reconstruct",
    "select2d",
    "stats",
    "subset",
    "synth",
    "view",
]

StoreLike = PathLike | ParticleStore
"""A store path or an open :class:`ParticleStore`."""


def _scheduler(spec: str | None) -> contextlib.AbstractContextManager[Any]:
    """The scheduler context for ``spec`` (None: whatever is active, else threads)."""
    if spec is None:
        return contextlib.nullcontext()
    from cryoframe.distributed import scheduler

    return scheduler(spec)


@overload
def _check_seed(seed: int) -> int: ...
@overload
def _check_seed(seed: None) -> None: ...
def _check_seed(seed: int | None) -> int | None:
    """:func:`cryoframe.types.check_seed` before anything runs (None: the job's default)."""
    return None if seed is None else check_seed(seed)


def _check_partition_size(size: int | None) -> None:
    """Particles per Dask task: >= 1 (None: the default)."""
    if size is not None and not (isinstance(size, numbers.Integral) and size >= 1):
        raise InputError(f"partition_size must be an integer >= 1 (got {size!r})")


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
    """Import a ``.cs`` (with passthroughs), ``.star`` or ``.mrcs`` file into a new store at ``out``.

    ``project_dir``: base directory of the image paths the file names (default: next to the file);
    ``metadata_only``: skip the images; ``psize_A``: pixel size (Å/px) of a ``.mrcs`` import
    (default: the MRC header's voxel size).
    """
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
    from cryoframe.storage.importers import import_file

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
    view = None
    if s.view is not None:
        v = man["view"]
        view = {"parent": str(s.view.root.path), "parent_hash": v["parent_hash"], "n_parent": v["n_parent"],
                "n_selected": v["n_selected"], "encoding": v["encoding"],
                "added": [c for c in s.fields if c in s.view.added_names], "computed": sorted(v.get("computed") or {})}
    return {
        "path": str(s.path),
        "view": view,
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


@overload
def query(store: StoreLike, where: str | None = None, *, columns: Sequence[str] | None = None, out: None = None,
          head: int | None = None, overwrite: bool = False, scheduler: str | None = None,
          join: Sequence[StoreLike] = ()) -> pd.DataFrame: ...
@overload
def query(store: StoreLike, where: str | None = None, *, columns: Sequence[str] | None = None, out: PathLike,
          head: int | None = None, overwrite: bool = False, scheduler: str | None = None,
          join: Sequence[StoreLike] = ()) -> ParticleStore: ...
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
) -> pd.DataFrame | ParticleStore:
    """Filter with a pandas ``query`` expression (backticks around ``group/field`` names).

    ``join``: further stores joined on uid first (fields present in several stores are
    suffixed ``@<store name>``), so one question can span a 2D job, a 3D job and the picks.

    With ``out`` a new store referencing the parent's images is written and returned; otherwise
    a pandas DataFrame of the first ``head`` matching rows (all when ``head`` is None).
    ``scheduler`` names the Dask scheduler (``threads``, ``synchronous``, ``local:N``, ...).
    """
    s = open_store(store)
    with _scheduler(scheduler):
        if join and out is None:
            from cryoframe.query.join import join_stores

            return join_stores([s, *[open_store(j) for j in join]], out, where, columns, head=head,
                               overwrite=overwrite)
        if out is not None:
            from cryoframe.query.join import write_query

            return write_query(s, out, where, columns, join=[open_store(j) for j in join], overwrite=overwrite)
        import pandas as pd

        query_frame(s, where, columns)  # validates field names and syntax with pandas' rules
        t = filter_table(s, where, columns)
        if head is not None:
            t = t.slice(0, head)
        df: pd.DataFrame = t.to_pandas(types_mapper=pd.ArrowDtype)
        return df


def export(store: StoreLike, out: PathLike, *, format: ExportFormat | None = None, images: bool = False,
           extra_fields: bool = True, overwrite: bool = False) -> Path:
    """Export to ``.cs`` or ``.star`` (``format`` defaults to ``out``'s suffix)."""
    from cryoframe.storage.exporters import export as _export

    return _export(open_store(store), out, format=format, images=images, extra_fields=extra_fields,
                   overwrite=overwrite)


def materialize(view: StoreLike, out: PathLike, *, overwrite: bool = False) -> ParticleStore:
    """Write a view's rows (parent columns + added/computed ones) as a plain store at ``out``."""
    from cryoframe.storage.store import materialize as _materialize

    return _materialize(open_store(view), out, overwrite=overwrite)


def synth(out: PathLike, n: int, box: int = 64, classes: int = 8, snr: float = 0.05, seed: int = 0,
          kind: SynthKind = "2d", metadata_only: bool = False, overwrite: bool = False, psize_A: float = 2.0,
          ctf: bool = True, batch_size: int = 262_144, junk: float = 0.0) -> ParticleStore:
    """Write a deterministic synthetic store with ground truth (see :func:`cryoframe.synthetic.synth_store`).

    ``n`` particles of ``box`` px at ``psize_A`` Å/px from ``classes`` 2D templates or 3D volumes
    (``kind``), with CTF (``ctf``) and noise at signal-to-noise (variance) ratio ``snr``;
    ``batch_size`` rows are generated at a time; ``junk``: fraction of junk images (empty picks,
    debris, ice/carbon edges) with truth.
    """
    seed = _check_seed(seed)
    from cryoframe.synthetic import synth_store

    return synth_store(out, n, box=box, classes=classes, snr=snr, seed=seed, kind=kind,
                       metadata_only=metadata_only, overwrite=overwrite, psize_A=psize_A, ctf=ctf,
                       batch_size=batch_size, junk=junk)


def demo(workdir: PathLike | None = None, *, n: int = 2000, box: int = 64, seed: int = 0) -> dict[str, Any]:
    """Run the end-to-end tour on synthetic data; returns what was done and where the files are."""
    seed = _check_seed(seed)
    from cryoframe.jobs.demo import run_demo

    return run_demo(workdir, n=n, box=box, seed=seed)


def stats(store: StoreLike, by: str | None = None, *, initial: StoreLike | None = None,
          class_indices: Sequence[int] | None = None, class_agg: ClassAgg = "sum",
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


def subset(store: StoreLike, out: PathLike, *, by: str, mode: SubsetMode = "gmm", components: int = 2,
           min_prob: float | None = None, thresholds: Sequence[float] = (), initial: StoreLike | None = None,
           class_indices: Sequence[int] | None = None, class_agg: ClassAgg = "sum", on_missing: OnMissing = "error",
           format: ExportFormat | None = None, project_dir: PathLike | None = None, seed: int = 0,
           tol: float = 1e-3, max_iter: int = 100, plots: bool = True, device: Device = "cpu",
           overwrite: bool = False, scheduler: str | None = None) -> SubsetResult:
    """Subset particles by statistic (GMM or thresholds); returns a :class:`cryoframe.jobs.SubsetResult`
    with ``sets`` (stores, low to high mean), ``dropped``, ``summary`` and the fitted ``model``."""
    seed = _check_seed(seed)
    from cryoframe.jobs.subset import subset as _subset

    with _scheduler(scheduler):
        return _subset(open_store(store), out, by=by, mode=mode, components=components, min_prob=min_prob,
                       thresholds=thresholds, initial=open_store(initial) if initial is not None else None,
                       class_indices=class_indices, class_agg=class_agg, on_missing=on_missing,
                       export_format=format, project_dir=str(project_dir) if project_dir else None, seed=seed,
                       tol=tol, max_iter=max_iter, plots=plots, device=device, overwrite=overwrite)


def class2d(store: StoreLike, out: PathLike, *, classes: int | None = None, iters: int | None = None,
            tau_fudge: float | None = None, mask_diameter_A: float | None = None, psi_step_deg: float | None = None,
            offset_range_px: float | None = None, offset_step_px: float | None = None, ctf: bool | None = None,
            ctf_mode: CtfMode | None = None, zero_mask: bool | None = None,
            limit_e_step_resolution_A: float | None = None, center: bool | None = None,
            algorithm: Class2DAlgorithm | None = None, init: Class2DInit | None = None, nbasis: int | None = None,
            seed: int | None = None, scale: Class2DScale | None = None, outliers: bool | None = None,
            device: Device = "cpu", resume: bool = False, plots: bool = True,
            overwrite: bool = False, scheduler: str | None = None) -> ParticleStore:
    """2D classification of the store's images into ``classes`` classes (RELION-style EM or VDAM).

    ``tau_fudge`` is RELION's T; ``mask_diameter_A`` (Å, default 0.9 x box) the soft circular mask;
    ``psi_step_deg`` (deg), ``offset_range_px``/``offset_step_px`` (px) the in-plane search;
    ``ctf_mode`` ``full`` or ``flip`` (phase flipping only); ``limit_e_step_resolution_A`` (Å)
    the E-step resolution limit; ``center`` re-centres class averages; ``init`` ``random`` or
    ``msa`` (PCA basis of ``nbasis``); ``scale`` the per-particle contrast scale in the likelihood
    (``sample``: per class, angle and shift under a N(1, 0.3^2) prior, so junk still prefers flat
    classes; ``none``: the class's own, as RELION; ``particle``: one per particle); ``outliers``
    (default True): particles that fit no class get label ``classes`` and leave the averages
    (:mod:`cryoframe.algorithms.class2d.misfit`); ``resume`` continues from the store's checkpoint (CLI
    ``--continue``).  Options left None take the documented defaults
    (:data:`cryoframe.jobs.class2d.DEFAULTS`: K 50, 25 iterations, T 2, psi 6 deg, offsets 5/1 px, full CTF,
    EM, random init, seed 0, scale sample) or, with ``resume``, the values of the run being continued; an option given
    explicitly that differs from the checkpoint is refused.  See :func:`cryoframe.jobs.class2d.class2d`.
    """
    seed = _check_seed(seed)
    from cryoframe.jobs.class2d import class2d as _class2d

    with _scheduler(scheduler):
        return _class2d(open_store(store), out, classes=classes, iters=iters, tau_fudge=tau_fudge,
                        mask_diameter_A=mask_diameter_A, psi_step_deg=psi_step_deg,
                        offset_range_px=offset_range_px, offset_step_px=offset_step_px, ctf=ctf,
                        ctf_mode=ctf_mode, zero_mask=zero_mask, limit_e_step_resolution_A=limit_e_step_resolution_A,
                        center=center, algorithm=algorithm, init=init, nbasis=nbasis, seed=seed, scale=scale,
                        outliers=outliers, device=device,
                        resume=resume, plots=plots, overwrite=overwrite)


def select2d(store: StoreLike, out: PathLike, *, classes: Sequence[int] | None = None, auto: bool = False,
             threshold: float | None = None, min_evidence: float | None = None, max_misfit: float | None = None,
             regroup: int | None = None, overwrite: bool = False) -> ParticleStore:
    """Keep the particles of chosen or auto-selected 2D classes (a store referencing the images).

    ``auto`` keeps classes whose score is at least ``threshold`` (None: the default of
    :mod:`cryoframe.algorithms.class2d.rank`) and, of their particles, those whose evidence over an
    empty pick is at least ``min_evidence`` nats and whose low-resolution misfit to their class is at
    most ``max_misfit`` (None: the ranker's ``DEFAULT_MIN_EVIDENCE`` / ``DEFAULT_MAX_MISFIT`` with
    ``auto``, no limit with ``classes``); ``regroup`` re-assigns noise groups
    (rlnGroupNumber) into about that many groups of similar defocus and scale.
    """
    from cryoframe.jobs.class2d import select2d as _select2d

    return _select2d(open_store(store), out, classes=list(classes) if classes else None, auto=auto,
                     threshold=threshold, min_evidence=min_evidence, max_misfit=max_misfit, regroup=regroup, overwrite=overwrite)


def reconstruct(store: StoreLike, out: PathLike, *, symmetry: str = "C1", max_resolution_A: float | None = None,
                mask: PathLike | None = None, ctf: bool = True, weights: str | None = None,
                regulariser: str | float = "fsc", tau2_fudge: float = 1.0, pad: int = 2, seed: int = 0,
                device: Device = "cpu", partition_size: int = 2000, plots: bool = True, overwrite: bool = False,
                scheduler: str | None = None) -> dict[str, Any]:
    """3D reconstruction of ``store``'s posed particles into directory ``out`` (map, half maps, FSC, plots);
    see :func:`cryoframe.jobs.reconstruct.reconstruct`.  ``max_resolution_A`` in Å; ``mask`` an MRC of the
    same box and pixel size; ``weights`` a per-particle weight field."""
    seed = _check_seed(seed)
    _check_partition_size(partition_size)
    from cryoframe.jobs.reconstruct import reconstruct as _reconstruct

    with _scheduler(scheduler):
        return _reconstruct(open_store(store), out, symmetry=symmetry, max_resolution_A=max_resolution_A,
                            mask=mask, ctf=ctf, weights=weights, regulariser=regulariser, tau2_fudge=tau2_fudge,
                            pad=pad, seed=seed, device=device, partition_size=partition_size, plots=plots,
                            overwrite=overwrite)


def project(map_path: PathLike, out: PathLike, *, poses: StoreLike | None = None, n: int | None = None,
            ctf: bool = False, snr: float | None = None, seed: int = 0, max_shift_px: float = 0.0,
            defocus_A: tuple[float, float] = (10000.0, 25000.0), psize_A: float | None = None, pad: int = 2,
            device: Device = "cpu", overwrite: bool = False, scheduler: str | None = None) -> ParticleStore:
    """Project a map (MRC) at the poses of ``poses`` (or ``n`` random poses) into a new store ``out``
    (as relion_project); see :func:`cryoframe.jobs.project.project`.  Shifts in px, defocus in Å."""
    seed = _check_seed(seed)
    from cryoframe.jobs.project import project as _project

    with _scheduler(scheduler):
        return _project(map_path, out, poses=open_store(poses) if poses is not None else None, n=n, ctf=ctf,
                        snr=snr, seed=seed, max_shift_px=max_shift_px, defocus_A=defocus_A, psize_A=psize_A,
                        pad=pad, device=device, overwrite=overwrite)


def mask(map_path: PathLike | None, out: PathLike, *, threshold: float | None = None, extend_px: float = 0.0,
         soft_edge_px: float = 0.0, radius_px: float | None = None, box: int | None = None,
         psize_A: float | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a mask MRC (as relion_mask_create): threshold a map, extend by ``extend_px``, raised-cosine
    edge of ``soft_edge_px``; or a soft sphere of ``radius_px`` in a ``box``; see :func:`cryoframe.jobs.mask.mask`."""
    from cryoframe.jobs.mask import mask as _mask

    return _mask(map_path, out, threshold=threshold, extend_px=extend_px, soft_edge_px=soft_edge_px,
                 radius_px=radius_px, box=box, psize_A=psize_A, overwrite=overwrite)


def class3d(store: StoreLike, out: PathLike, *, classes: int | None = None, iters: int | None = None,
            target_resolution_A: float | None = None, solvent_mask: PathLike | None = None,
            focus_mask: PathLike | None = None, scale: str | None = None, init: str | None = None,
            class_similarity: float | None = None, oem_epochs: int | None = None, oem_batch: int | None = None,
            oem_lr: float | None = None, switch_threshold: float | None = None, rms_threshold: float | None = None,
            hard: bool | None = None, fsc_filter: bool | None = None, tau2_fudge: float | None = None,
            cross_half: bool | None = None, auto_mask: bool | None = None, starts: int | None = None,
            seed: int | None = None, ctf: bool | None = None, partition_size: int | None = None, device: str = "cpu",
            resume: bool = False,
            plots: bool = True, overwrite: bool = False, scheduler: str | None = None) -> ParticleStore:
    """3D classification without alignment (see :func:`cryoframe.jobs.class3d.class3d`); None takes the
    default, or with ``resume`` the checkpoint's value."""
    seed = _check_seed(seed)
    _check_partition_size(partition_size)
    from cryoframe.jobs.class3d import class3d as _class3d

    with _scheduler(scheduler):
        return _class3d(open_store(store), out, classes=classes, iters=iters, target_resolution_A=target_resolution_A,
                        solvent_mask=None if solvent_mask is None else str(solvent_mask),
                        focus_mask=None if focus_mask is None else str(focus_mask), scale=scale, init=init,
                        class_similarity=class_similarity, oem_epochs=oem_epochs, oem_batch=oem_batch, oem_lr=oem_lr,
                        switch_threshold=switch_threshold, rms_threshold=rms_threshold, hard=hard,
                        fsc_filter=fsc_filter, tau2_fudge=tau2_fudge, cross_half=cross_half, auto_mask=auto_mask,
                        starts=starts, seed=seed, ctf=ctf,
                        partition_size=partition_size, device=device, resume=resume, plots=plots,
                        overwrite=overwrite)


def abinitio(store: StoreLike, out: PathLike, *, classes: int = 1, particles: int | None = None,
             symmetry: str = "C1", max_resolution_A: float = 12.0, initial_resolution_A: float | None = None,
             initial_iterations: int = 40, intermediate_iterations: int | None = None, final_iterations: int = 0,
             initial_minibatch: int = 300, final_minibatch: int = 600, initial_learning_rate: float = 0.3,
             final_learning_rate: float = 0.2, noise_model: str = "coloured", noise_init_sigmascale: float = 1.0,
             noise_priorw: float = 50.0, class_similarity: float = 0.1,
             class_similarity_anneal_start: int | None = None, class_similarity_anneal_end: int | None = None,
             coarse_step_deg: float = 15.0, fine_step_deg: float = 1.875, shift_range_px: float = 6.0,
             shift_step_px: float = 2.0, n_candidates: int = 4, final_passes: int = 1, ctf: bool = True,
             seed: int = 0, device: str = "cpu", resume: bool = False, plots: bool = True,
             overwrite: bool = False, scheduler: str | None = None, starts: int = 4, final_coarse_step_deg: float = 15.0,
             normalise_noise: bool = False) -> ParticleStore:
    """Ab-initio reconstruction of ``classes`` volumes and 3D poses (see
    :func:`cryoframe.jobs.abinitio.abinitio`; resolutions in Å, shifts in px, steps in degrees)."""
    seed = _check_seed(seed)
    from cryoframe.jobs.abinitio import abinitio as _abinitio

    with _scheduler(scheduler):
        return _abinitio(
            open_store(store), out, classes=classes, particles=particles, symmetry=symmetry,
            max_resolution_A=max_resolution_A, initial_resolution_A=initial_resolution_A,
            initial_iterations=initial_iterations, intermediate_iterations=intermediate_iterations,
            final_iterations=final_iterations, initial_minibatch=initial_minibatch, final_minibatch=final_minibatch,
            initial_learning_rate=initial_learning_rate, final_learning_rate=final_learning_rate,
            noise_model=noise_model, noise_init_sigmascale=noise_init_sigmascale, noise_priorw=noise_priorw,
            class_similarity=class_similarity, class_similarity_anneal_start=class_similarity_anneal_start,
            class_similarity_anneal_end=class_similarity_anneal_end, coarse_step_deg=coarse_step_deg,
            fine_step_deg=fine_step_deg, shift_range_px=shift_range_px, shift_step_px=shift_step_px,
            n_candidates=n_candidates, final_passes=final_passes, ctf=ctf, seed=seed, device=device, resume=resume,
            plots=plots, overwrite=overwrite, starts=starts, final_coarse_step_deg=final_coarse_step_deg,
            normalise_noise=normalise_noise)


def view(store: StoreLike, *, join: Sequence[StoreLike] = (), save_dir: PathLike | None = None, serve: bool = False,
         port: int = 5006, address: str = "127.0.0.1", show: bool = True) -> Any:
    """The interactive curation page (a Panel layout, shown inline in a notebook) for ``store``
    (``join``: further stores joined on uid); the save button writes into ``save_dir`` (default: cwd).

    ``serve=True`` serves it at http://ADDRESS:PORT/ instead and blocks (``cryoframe view``).
    """
    from cryoframe.view.server import make_data
    from cryoframe.view.server import serve as _serve

    data = make_data(open_store(store), [open_store(j) for j in join])
    sdir = None if save_dir is None else Path(save_dir)
    if serve:
        return _serve(data, port=port, address=address, show=show, save_dir=sdir)
    from cryoframe.view.app import CurationApp

    return CurationApp(data, save_dir=sdir).layout
