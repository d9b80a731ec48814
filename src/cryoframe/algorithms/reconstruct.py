"""CTF-weighted 3D reconstruction from particles with known poses, as a Dask reduction.

Each partition of particles (its images, pose matrices, shifts, CTF parameters, weights and half
labels) is turned into partial Fourier sums for both half sets — ``sum w CTF F`` and
``sum w CTF^2`` on the padded half grid (:mod:`cryoframe.geometry.fourier`) — on NumPy (numba
kernels) or CuPy; the partial sums are added by a tree sum (:func:`cryoframe.distributed.mapreduce.tree_reduce` of :func:`~cryoframe.distributed.mapreduce.sum_reduce`), so the memory of a
worker is bounded by its partition and a few grids, not by the number of particles.  The driver
then forms the half maps, the FSC, RELION's FSC-based regulariser, the regularised half maps and
the map of both halves, and the FSC-weighted map (see :class:`Reconstructor`).

Symmetry: every particle is inserted once per operator ``g`` of the group, with pose ``g R``
(a particle of a symmetric object is equally a view at ``g R``).  On the CPU the shift, the CTF and
the insertion run fused in one numba loop (:func:`cryoframe.geometry._kernels.insert_ctf`); the
vectorised path (CuPy, or NumPy without numba) applies them as array operations.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
import threading
import time
from typing import Any

import numpy as np

from cryoframe.backend import get_array_module, thread_map, to_host
from cryoframe.distributed.mapreduce import compute, sum_reduce, tree_reduce
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.backprojector import fsc_regulariser, map_from_sums, shell_mean_weight
from cryoframe.geometry.ctf import ctf_grid
from cryoframe.geometry.fsc import fsc, fsc_weighted, resolution_at, shell_frequencies
from cryoframe.geometry.symmetry import symmetry_matrices

__all__ = ["Reconstructor", "partition_sums"]

log = logging.getLogger(__name__)


def partition_sums(images: Any, rot: np.ndarray, shifts_px: np.ndarray, ctf: dict[str, np.ndarray] | None,
                   weights: np.ndarray | None, half: np.ndarray, *, box: int, psize_A: float, pad: int = 2,
                   r_max: float | None = None, sym: np.ndarray | None = None, device: str = "cpu",
                   batch: int = 512) -> np.ndarray:
    """Partial Fourier sums of one partition: (2, P, P, P // 2 + 1, 3) float32 — per half (0/1):
    real and imaginary part of ``sum w CTF F`` and ``sum w CTF^2``.

    ``images`` (n, box, box) real; ``rot`` (n, 3, 3) pose matrices; ``shifts_px`` (n, 2) the
    translation (px of the images) that centres each particle; ``ctf`` (n,) arrays of
    :data:`cryoframe.geometry.ctf.CTF_PARAMS` or None; ``weights`` (n,) or None; ``half`` (n,) 0/1.
    On the CPU with numba the insertion runs in this process's kernel worker when one was started
    (:mod:`cryoframe.geometry._kernel_worker`; the CLI does), else here.
    """
    xp = get_array_module(device)
    kw: dict[str, Any] = dict(box=box, psize_A=psize_A, pad=pad, r_max=r_max, sym=sym, batch=batch)
    if fo._use_numba(xp, "auto"):
        from cryoframe.geometry import _kernel_worker

        worker = _kernel_worker.active()
        if worker is not None:
            try:
                return _partition_sums(images, rot, shifts_px, ctf, weights, half, xp=xp, worker=worker, **kw)
            except _kernel_worker.WorkerGone as exc:
                log.warning("%s; inserting in this process", exc)
    return _partition_sums(images, rot, shifts_px, ctf, weights, half, xp=xp, worker=None, **kw)


def _partition_sums(images: Any, rot: np.ndarray, shifts_px: np.ndarray, ctf: dict[str, np.ndarray] | None,
                    weights: np.ndarray | None, half: np.ndarray, *, box: int, psize_A: float, pad: int,
                    r_max: float | None, sym: np.ndarray | None, xp: Any, worker: Any, batch: int) -> np.ndarray:
    sym = np.eye(3)[None] if sym is None else np.asarray(sym, dtype=np.float64)
    fused = fo._use_numba(xp, "auto")
    if fused:
        from cryoframe.geometry import _kernels

        kx, ky, flat = fo.image_freqs(box, r_max)
    out = []
    for h in (0, 1):
        # float32 partial sums: half the memory traffic of the scattered updates (the cost of insertion);
        # a partition adds at most a few thousand terms per voxel, far from float32's precision limit
        sums = fo.new_sums(box, pad, xp, dtype=xp.float32) if worker is None else worker.sums(
            fo.sums_shape(box, pad))  # in the kernel worker: both halves' batches stream there back to back
        sel = np.flatnonzero(half == h)
        sel = sel[_view_order(rot[sel])]
        for s in range(0, len(sel), batch):
            idx = sel[s:s + batch]
            img = xp.asarray(np.asarray(images[idx], dtype=np.float32))
            c_par = None if ctf is None else {k: np.asarray(v)[idx] for k, v in ctf.items()}
            w = np.ones(len(idx)) if weights is None else np.asarray(weights, dtype=np.float64)[idx]
            if fused:  # shift, CTF and insertion in one compiled loop
                params = _kernels.insert_ctf_params(kx, ky, box, psize_A, c_par, shifts_px[idx], w)
                rots = np.stack([(g @ rot[idx]) * pad for g in sym])
                if worker is not None:  # the worker transforms the images and inserts them
                    sums.insert_ctf(rots, kx, ky, flat, img, params)
                else:
                    fo.insert_images(sums, rots, kx, ky, flat, img, params)
                continue
            f = fo.cfft2(img, xp) * fo.phase_shift(box, shifts_px[idx], xp)
            c = None if c_par is None else ctf_grid(box, psize_A, c_par, xp=xp)
            for g in sym:
                r = g @ rot[idx]
                fo.insert_slices(sums, r if xp is np else xp.asarray(r), f, c, w, box, pad, r_max, xp, method="xp")
        out.append(sums)
    return np.stack([s.result() if worker is not None else to_host(s).astype(np.float32) for s in out])


def _view_order(rot: np.ndarray) -> np.ndarray:
    """Order of particles by viewing direction (the slice normal ``R e_z``, sign folded): successive
    slices then update neighbouring parts of the grid, which keeps the scattered updates in cache
    (about 1.5x faster insertion than random order)."""
    d = rot[:, :, 2] * np.where(rot[:, 0:1, 2] < 0, -1.0, 1.0)
    return np.lexsort((np.arctan2(d[:, 1], d[:, 2]), np.round(np.arccos(np.clip(d[:, 0], -1.0, 1.0)) * 6)))


class Reconstructor:
    """Reconstruct half maps, the map, FSC and FSC-weighted map from posed particles.

    Parameters
    ----------
    box, psize_A : image size (px) and pixel size (Å/px).
    pad : padding factor of the Fourier grids (2, as RELION).
    symmetry : point group (:func:`cryoframe.geometry.symmetry.symmetry_matrices`).
    max_resolution_A : frequencies beyond it (Å) are neither inserted nor kept; None: Nyquist.
    regulariser : ``"fsc"`` (RELION's ``1 / (T tau^2)`` with tau^2 from the half-map FSC), ``"none"``
        (``relion_reconstruct``'s default: weights floored at 1/1000 of their shell mean) or a float
        constant added to every weight (see :mod:`cryoframe.geometry.backprojector`).
    tau2_fudge : T of the ``"fsc"`` regulariser.
    device : ``cpu``, ``gpu`` or ``auto`` (:func:`cryoframe.backend.get_array_module`).
    partition_size : particles per Dask task.

    Learned attributes: ``half_maps_`` (2, b, b, b) float32, ``map_``, ``map_filtered_``,
    ``fsc_`` (unmasked, shells 0..b/2), ``fsc_masked_`` (or None), ``frequencies_`` (1/Å),
    ``resolution_`` ({"0.143": Å, "0.5": Å} of the masked FSC when a mask was given, else unmasked),
    ``resolution_unmasked_``, ``n_per_half_``, ``timings_`` (s).
    """

    def __init__(self, box: int, psize_A: float, *, pad: int = 2, symmetry: str = "C1",
                 max_resolution_A: float | None = None, regulariser: str | float = "fsc", tau2_fudge: float = 1.0,
                 device: str = "cpu", partition_size: int = 2000) -> None:
        self.box = box
        self.psize_A = psize_A
        self.pad = pad
        self.symmetry = symmetry
        self.max_resolution_A = max_resolution_A
        self.regulariser = regulariser
        self.tau2_fudge = tau2_fudge
        self.device = device
        self.partition_size = partition_size

    @property
    def r_max_(self) -> float:
        """Insertion radius in cycles per box."""
        if self.max_resolution_A is None:
            return self.box / 2
        return min(self.box / 2, self.box * self.psize_A / self.max_resolution_A)

    def fit(self, images: Any, rot: np.ndarray, shifts_px: np.ndarray, half: np.ndarray,
            ctf: dict[str, np.ndarray] | None = None, weights: np.ndarray | None = None,
            mask: np.ndarray | None = None) -> Reconstructor:
        """Reconstruct from ``images``: a dask or NumPy array (n, b, b), or a reader ``images(lo, hi)``
        returning particles ``lo:hi`` (called inside each partition's task, e.g.
        ``ParticleStore.read_images``); other arguments as :func:`partition_sums`."""
        import dask

        t0 = time.perf_counter()
        n = len(rot)
        sym = symmetry_matrices(self.symmetry)
        step = max(1, int(self.partition_size))
        if type(images).__module__.startswith("dask"):  # a dask array: its blocks, rechunked to partitions
            x = images.rechunk((step, images.shape[1], images.shape[2]))
            blocks = list(x.to_delayed().ravel())
            starts = np.cumsum((0,) + x.chunks[0])
            ranges = list(zip(starts[:-1], starts[1:], strict=True))
        else:  # a reader ``images(lo, hi)`` (read inside each task) or an in-memory array
            ranges = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
            if callable(images):
                blocks = [dask.delayed(images)(int(lo), int(hi)) for lo, hi in ranges]
            else:
                arr = np.asarray(images)
                blocks = [arr[lo:hi] for lo, hi in ranges]
        parts = []
        for b, (lo, hi) in zip(blocks, ranges, strict=True):
            sl = slice(int(lo), int(hi))
            parts.append(dask.delayed(partition_sums)(
                b, rot[sl], shifts_px[sl], None if ctf is None else {k: v[sl] for k, v in ctf.items()},
                None if weights is None else weights[sl], half[sl], box=self.box, psize_A=self.psize_A,
                pad=self.pad, r_max=self.r_max_, sym=sym, device=self.device))
        if self.device == "cpu" and "scipy.fft" not in sys.modules:  # the maps' FFTs: import it while the
            threading.Thread(target=importlib.import_module, args=("scipy.fft",), daemon=True).start()  # sums form
        (total,) = compute(tree_reduce(parts, sum_reduce))
        t1 = time.perf_counter()
        self._finish(total, mask)
        self.n_per_half_ = [int(np.sum(half == 0)), int(np.sum(half == 1))]
        self.n_particles_ = n
        self.timings_ = {"insert_s": t1 - t0, "maps_s": time.perf_counter() - t1}
        return self

    def _finish(self, total: np.ndarray, mask: np.ndarray | None) -> None:
        xp = np if self.device == "cpu" else get_array_module(self.device)
        b, pad, rm = self.box, self.pad, self.r_max_
        halves = []
        for h in (0, 1):
            s = xp.array(total[h], dtype=xp.float32)  # (float32 partial sums; the maps are float32 too)
            fo.enforce_hermitian(s, xp)
            halves.append(s)
        both = halves[0] + halves[1]

        def maps(jobs: list[tuple[Any, Any]]) -> list[np.ndarray]:
            """Maps of (sums, regulariser) pairs; on the CPU in threads (the FFTs and the element-wise
            NumPy work release the GIL), so the halves are formed side by side."""
            def one(job: tuple[Any, Any]) -> np.ndarray:
                return to_host(map_from_sums(job[0], b, pad, job[1], rm, xp))

            return thread_map(one, jobs, 1 if xp is not np else None)

        if isinstance(self.regulariser, str) and self.regulariser == "fsc":
            raw = maps([(s, None) for s in halves])
            c0 = fsc(raw[0], raw[1])
            regs = [fsc_regulariser(c0, shell_mean_weight(s[..., 2], b, pad, xp), self.tau2_fudge) for s in halves]
            reg_all = fsc_regulariser(c0, shell_mean_weight(both[..., 2], b, pad, xp), self.tau2_fudge, full_map=True)
            *hm, full = maps([*zip(halves, regs, strict=True), (both, reg_all)])
        else:
            reg = None if self.regulariser == "none" else float(self.regulariser)
            *hm, full = maps([*((s, reg) for s in halves), (both, reg)])
        self.half_maps_ = np.stack(hm).astype(np.float32)
        self.map_ = full.astype(np.float32)
        self.frequencies_ = shell_frequencies(b, self.psize_A)
        self.fsc_ = fsc(hm[0], hm[1])
        self.fsc_masked_ = None if mask is None else fsc(hm[0], hm[1], mask)
        curve = self.fsc_ if self.fsc_masked_ is None else self.fsc_masked_
        nyq = int(math.floor(rm))
        cut = curve.copy()
        cut[nyq + 1:] = 0.0  # beyond --max-resolution nothing was inserted
        floor = self.max_resolution_A or 0.0  # nothing beyond --max-resolution was inserted: claim no better
        self.resolution_ = {str(t): max(resolution_at(cut, b, self.psize_A, t), floor) for t in (0.143, 0.5)}
        self.resolution_unmasked_ = {str(t): resolution_at(self.fsc_, b, self.psize_A, t) for t in (0.143, 0.5)}
        self.map_filtered_ = to_host(fsc_weighted(self.map_, cut))
