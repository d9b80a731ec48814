"""The end of an :class:`~cryoframe.algorithms.abinitio.AbInitio` fit: the final passes over all
particles (poses, shifts and class posteriors at the full search resolution) and the class maps at
the full box.

Final search (:func:`final_search`): K = 1 the branch-and-bound search of ``final_coarse_step_deg``
down to ``fine_step_deg``.  K > 1: the class evidences come from the soft search of the SGD
iterations against every class (its grid's best poses rescored at the full resolution), and the
full search runs only under each particle's most probable class; the other classes keep the soft
search's best ``n_candidates`` poses.  Every pass but the last re-estimates the volumes from all
particles at the poses found.  The SGD iterations of the final phase (``final_iterations``) search
their minibatches the same way.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cryoframe.algorithms.posesearch import SearchResult
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.rotations import matrix_to_pose

__all__ = ["class_maps", "final_passes", "final_search"]


def final_passes(m: Any, images: Any, ctf_params: dict[str, np.ndarray] | None, n: int, t_start: float) -> None:
    """``m.final_passes`` passes over all ``n`` particles, then the learned attributes (labels,
    posteriors, poses, shifts) and the class maps (:func:`class_maps`)."""
    r = m.r_max_
    K = m.n_classes
    for p in range(m.final_passes):
        t0 = time.perf_counter()
        rot = np.empty((n, K, 3, 3))
        shifts = np.empty((n, K, 2))
        ev = np.empty((n, K))
        results: list[list[SearchResult]] = []
        for s in range(0, n, 1024):
            idx = np.arange(s, min(n, s + 1024))
            res, e = final_search(m, idx, r)
            ev[idx] = e
            for k in range(K):
                rot[idx, k] = res[k].rot[:, 0]
                shifts[idx, k] = res[k].shift[:, 0]
            results.append(res)
        post = m._posteriors(ev, 0.0)
        m._sizes = post.mean(0)
        if p + 1 < m.final_passes:
            w = m._noise_weights(None)
            for k in range(K):
                acc: np.ndarray | None = None
                for s, res in zip(range(0, n, 1024), results, strict=True):
                    idx = np.arange(s, min(n, s + 1024))
                    bs = m._batch_sums(idx, res[k].rot, res[k].shift, post[idx, k:k + 1] * res[k].weight, w, r)
                    acc = bs if acc is None else acc + bs
                if acc is not None:
                    m._sums[k] = acc
            m._volumes_w = m._volumes(r)
        m.history_.append({"iteration": len(m.history_) + 1, "phase": f"final pass {p + 1}",
                           "resolution_A": m.box_ * m.psize_A / r, "learning_rate": 1.0,
                           "minibatch": n, "class_similarity": 0.0, "class_sizes": m._sizes.tolist(),
                           "noise_anneal": 1.0, "time_s": time.perf_counter() - t0,
                           "elapsed_s": time.perf_counter() - t_start})
    labels = post.argmax(1)
    m.labels_ = labels
    m.posteriors_ = post.astype(np.float32)
    m.class_sizes_ = np.bincount(labels, minlength=K)
    m.rot_ = rot[np.arange(n), labels]
    m.poses_ = matrix_to_pose(m.rot_)
    m.shifts_px_ = shifts[np.arange(n), labels]
    m.slices_.append({"iteration": len(m.history_), "slices": [v[m.working_box_ // 2].copy() for v in m._volumes_w]})
    class_maps(m, images, ctf_params, post)


def final_search(m: Any, idx: np.ndarray, r: float) -> tuple[list[SearchResult], np.ndarray]:
    """The final search of particles ``idx`` at radius ``r`` (see the module docstring): per class
    results of ``n_candidates`` poses and the log evidences (b, K).  K full searches would cost K
    times as much for poses that are dropped or weigh almost nothing."""
    if m.n_classes == 1:
        return m._search_all(idx, None, r, full=True)
    soft, ev = m._search_all(idx, None, r, full=False, soft=True)
    best = m._posteriors(ev, 0.0).argmax(1)
    out = []
    for k, sr in enumerate(soft):
        res = sr.top(m._search.n_candidates)
        sel = np.flatnonzero(best == k)
        if len(sel):
            fr = m._search_all(idx[sel], None, r, full=True, classes=[k])[0][0].top(res.rot.shape[1])
            res.rot[sel], res.shift[sel], res.error[sel], res.weight[sel] = fr.rot, fr.shift, fr.error, fr.weight
        out.append(res)
    return out, ev


def _crop_zero_mean(images: np.ndarray, scale: np.ndarray, box_out: int) -> np.ndarray:
    """Images Fourier-cropped to ``box_out``, their mean (DC) removed and divided by their noise scales
    ``scale`` (n, 1, 1) as in the search: the pose search and the SGD volumes leave the origin out
    (:class:`~cryoframe.algorithms.posesearch.Components`), and an offset of particles not normalised to
    a zero background would add a constant to the maps."""
    out = fo.fourier_crop(images, box_out)
    return (out - out.mean(axis=(-2, -1), keepdims=True, dtype=np.float64).astype(np.float32)) / scale


def class_maps(m: Any, images: Any, ctf_params: dict[str, np.ndarray] | None, post: np.ndarray) -> None:
    """Each class's map at the full box from all particles weighted by their posteriors (half maps of a
    seeded split, FSC resolution): ``volumes_``, ``half_maps_``, ``fsc_``, ``resolution_A_``.

    Nothing beyond ``max_resolution_A`` is inserted, so the particles are Fourier-cropped to twice the
    box whose Nyquist that is (:func:`~cryoframe.geometry.fourier.band_box`), reconstructed there and
    the maps zero-padded in Fourier space back to the full box: band-limited maps for a fraction of the
    memory and time (box-400 particles reconstructed at their own box fill (pad x 400)^3 grids, tens of
    GB).  Twice: the coarser the real-space sampling of the reconstruction, the slightly worse its map
    (the K = 1 bench's map against the truth, FSC 0.5: 13.28 Å at the full box 64, 13.31 at 48,
    13.41 at the band box 22, round 2 session 18, ad hoc).
    """
    import dask.array as da

    from cryoframe.algorithms.reconstruct import Reconstructor

    n, b = len(post), m.box_
    bw = min(b, 2 * fo.band_box(b, m.psize_A, m.max_resolution_A))
    half = np.zeros(n, dtype=np.int64)
    half[m._rng(4).permutation(n)[(n + 1) // 2:]] = 1
    vols, halves, fscs, res = [], [], [], []
    for k in range(m.n_classes):
        wk = post[:, k].astype(np.float64)
        sel = np.flatnonzero(wk > 1e-3)
        if len(sel) < 2 or half[sel].min() == half[sel].max():
            vols.append(np.zeros((b,) * 3, np.float32))
            halves.append(np.zeros((2,) + (b,) * 3, np.float32))
            fscs.append(np.zeros(b // 2 + 1))
            res.append(float("inf"))
            continue
        rec = Reconstructor(bw, m.psize_A * b / bw, pad=m.pad, symmetry=m.symmetry,
                            max_resolution_A=m.max_resolution_A, regulariser="fsc", device=m.device)
        imgs = images[sel] if hasattr(images, "compute") else da.from_array(np.asarray(images), chunks=(1024, b, b))[sel]
        scale = da.from_array(m.noise_scale_[sel].astype(np.float32)[:, None, None], chunks=(imgs.chunks[0], 1, 1))
        imgs = da.map_blocks(_crop_zero_mean, imgs, scale, bw, chunks=(imgs.chunks[0], bw, bw), dtype=np.float32)
        rec.fit(imgs, m.rot_[sel], m.shifts_px_[sel] * (bw / b), half[sel],
                ctf=None if ctf_params is None else {a: v[sel] for a, v in ctf_params.items()}, weights=wk[sel])
        # a voxel of the cropped box is (b / bw)^3 of the full box's, and a projection sums b / bw times
        # fewer of them: its density is b / bw times the full box's
        vols.append(fo.resample_volume(rec.map_, b) * np.float32(bw / b))
        halves.append(np.stack([fo.resample_volume(h, b) * np.float32(bw / b) for h in rec.half_maps_]))
        fsc = np.zeros(b // 2 + 1)  # shells beyond the cropped box's Nyquist hold nothing
        fsc[:len(rec.fsc_)] = rec.fsc_
        fscs.append(fsc)
        res.append(rec.resolution_["0.143"])
    m.volumes_ = np.stack(vols)
    m.half_maps_ = np.stack(halves)
    m.fsc_ = np.stack(fscs)
    m.resolution_A_ = np.asarray(res)
