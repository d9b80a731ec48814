"""3D classification without alignment (cryoSPARC's 3D Classification, RELION Class3D
``--skip_align``): the :class:`Class3D` estimator.

Model: particle ``i`` at its fixed pose ``R_i`` and shift is ``a_i CTF_i P(S (F V_k + (1 - F) V_bar), R_i)``
plus Gaussian noise with a power spectrum per noise group, for one of K class volumes ``V_k``
(``V_bar`` the consensus reconstruction, ``S`` the solvent and ``F`` the focus mask, ``a_i`` the
per-particle scale).  The E-step is a Dask map over partitions of the particles
(:func:`cryoframe.algorithms.class3d.estep.estep_partition`) whose per-class Fourier sums are
added by a tree sum; the M-step regularises each class with RELION's FSC-based ``1 / (T tau^2)``.

Schedule (cryoSPARC v4): the consensus and the scales first; ``starts`` initialisations
(``simple``/``pca``), each followed by online EM (O-EM: ``oem_epochs`` passes in minibatches of
``oem_batch`` particles per class, decaying sufficient statistics with learning rate
``oem_lr / (1 + t / batches_per_epoch)``, FSC regularisation every O-EM iteration with per-class
FSC curves updated every 10th) and one full E-step that scores the start by its total
log-likelihood; the best start goes on with full-batch EM (F-EM) until fewer than
``switch_threshold`` % of the particles change class (or the size-weighted relative RMS change of
the maps is below ``rms_threshold``), at most ``n_iter`` iterations in all.  A class that empties
(fewer than 0.2 % of the particles) takes the worse-fitting half of the largest class.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from cryoframe.algorithms.class3d import mstep
from cryoframe.algorithms.class3d.checkpoint import load_checkpoint, save_checkpoint
from cryoframe.algorithms.class3d.estep import (
    estep_partition,
    freq_layout,
    prepare_partition,
    scale_partition,
)
from cryoframe.algorithms.class3d.init import initial_volumes
from cryoframe.distributed.mapreduce import compute, sum_reduce, tree_reduce
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.fsc import resolution_at

__all__ = ["Class3D"]

log = logging.getLogger(__name__)

#: bytes of prepared transforms + CTFs kept in memory between passes (else recomputed from the images)
MEMORY_BUDGET = 4 * 2**30

#: parameters that must match when a run continues from a checkpoint
FIXED = ("n_classes", "pad", "init", "class_similarity", "oem_epochs", "oem_batch", "oem_lr", "hard", "cross_half", "auto_mask",
         "fsc_filter", "tau2_fudge", "scale", "starts", "random_state", "partition_size")


AUTO_MASK = {"lowpass_A": 15.0, "threshold": 0.05, "extend_A": 8.0, "soft_edge_A": 15.0}
"""Automatic solvent mask (:func:`auto_solvent_mask`).  Measured on the K-state bench (4000 particles,
box 64, K 4): the three seeds below the ARI goals without a mask (0.973 at SNR 0.05; 0.824 and 0.852 at
0.02) reach 0.983-0.984, 0.849-0.857 and 0.887-0.893 with any of threshold 0.05-0.1, extension 3-6 px
(2.5 Å/px); a sphere of 0.35 box radius gives 0.980 / 0.855 / 0.882."""


def auto_solvent_mask(consensus: np.ndarray, psize_A: float) -> np.ndarray:
    """Soft solvent mask (b^3 float32 in [0, 1]) of a consensus map: low-passed to
    ``AUTO_MASK["lowpass_A"]``, thresholded at ``AUTO_MASK["threshold"]`` of its maximum (generous: a
    domain present in 1 of K states shows at 1/K of its density in the consensus), extended by
    ``extend_A`` and given a raised-cosine edge of ``soft_edge_A``.  A map without positive density
    gives all ones (no masking)."""
    from cryoframe.geometry.masks import threshold_mask

    v = np.asarray(consensus, dtype=np.float64)
    b = v.shape[0]
    k = np.fft.fftfreq(b) / psize_A
    kx = np.fft.rfftfreq(b) / psize_A
    keep = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) <= (1.0 / AUTO_MASK["lowpass_A"]) ** 2
    lp = np.fft.irfftn(np.fft.rfftn(v) * keep, s=v.shape, axes=(0, 1, 2))
    if not lp.max() > 0:
        return np.ones_like(v, dtype=np.float32)
    return threshold_mask(lp, AUTO_MASK["threshold"] * float(lp.max()), AUTO_MASK["extend_A"] / psize_A,
                          AUTO_MASK["soft_edge_A"] / psize_A)


class Class3D:
    """3D classification of particles with fixed poses (see the module docstring).

    Parameters
    ----------
    n_classes : K.
    n_iter : total iterations (O-EM + F-EM of the chosen start); F-EM stops earlier on convergence.
    pad : padding factor of the Fourier grids.
    init : ``simple`` or ``pca``; class_similarity : 0..1, pull of the initial maps to the consensus
        and the initial likelihood temperature ``1 - s`` (annealed to 1 over O-EM).
    oem_epochs, oem_batch, oem_lr : O-EM passes, particles per class per minibatch, initial rate.
    switch_threshold : F-EM convergence, % of particles changing class.
    rms_threshold : optional F-EM convergence on the size-weighted relative RMS map change.
    hard : reconstruct from hard (maximum-posterior) assignments instead of posterior weights.
    fsc_filter : regularise each class with its own FSC (else with the consensus FSC).
    tau2_fudge : T of the regulariser.  scale : ``none`` (default), ``optimal`` (least squares against
        the consensus projection: a particle of a state with more mass than the consensus gets a larger
        scale, which absorbs part of the very difference the classes must find -- on the 5-seed
        K-state bench ``none`` gives the higher ARI on every seed at SNR 0.05 and 0.02) or ``input``.
    starts : initialisations scored by log-likelihood after O-EM (the best is kept).
    auto_mask : without a solvent mask, make one from the consensus (:func:`auto_solvent_mask`), as
        RELION masks its references with a sphere of the particle diameter; False: no solvent mask.
    random_state, device (``cpu``/``gpu``/``auto``), partition_size (particles per Dask task),
    checkpoint_dir (state after every iteration).

    Learned attributes: ``volumes_`` (K, b, b, b) float32, ``consensus_``, ``posterior_`` (n, K),
    ``labels_``, ``class_posterior_``, ``ess_``, ``alpha_``, ``class_sizes_``, ``fsc_`` (K, b//2+1),
    ``resolution_A_`` (K,), ``noise_spectra_`` (G, b//2+1), ``history_``, ``n_iter_``, ``log_likelihood_``,
    ``solvent_mask_`` (the solvent mask used: given, automatic or None) and ``solvent_mask_auto_`` (bool).
    """

    _solvent: np.ndarray | None
    _focus: np.ndarray | None
    _geom: dict[str, Any]
    solvent_mask_auto_: bool

    @property
    def solvent_mask_(self) -> np.ndarray | None:
        """The solvent mask used (given, automatic or None)."""
        return self._solvent

    def __init__(self, n_classes: int, n_iter: int = 25, *, pad: int = 2, init: str = "simple",
                 class_similarity: float = 0.5, oem_epochs: int = 2, oem_batch: int = 1000, oem_lr: float = 0.4,
                 switch_threshold: float = 2.0, rms_threshold: float | None = None, hard: bool = False,
                 fsc_filter: bool = True, tau2_fudge: float = 4.0, scale: str = "none", starts: int = 1,
                 cross_half: bool = False, auto_mask: bool = True, random_state: int = 0, device: str = "cpu",
                 partition_size: int = 2000, checkpoint_dir: str | None = None) -> None:
        self.cross_half = cross_half
        self.auto_mask = auto_mask
        self.n_classes = n_classes
        self.n_iter = n_iter
        self.pad = pad
        self.init = init
        self.class_similarity = class_similarity
        self.oem_epochs = oem_epochs
        self.oem_batch = oem_batch
        self.oem_lr = oem_lr
        self.switch_threshold = switch_threshold
        self.rms_threshold = rms_threshold
        self.hard = hard
        self.fsc_filter = fsc_filter
        self.tau2_fudge = tau2_fudge
        self.scale = scale
        self.starts = starts
        self.random_state = random_state
        self.device = device
        self.partition_size = partition_size
        self.checkpoint_dir = checkpoint_dir

    # -- Dask plumbing ---------------------------------------------------------------------------
    def _partitions(self) -> None:
        """Fixed partitions of the particles; their prepared transforms and CTFs
        (:func:`~cryoframe.algorithms.class3d.estep.prepare_partition`) are persisted when they fit
        in ``MEMORY_BUDGET`` bytes, else recomputed from the images in every pass."""
        import dask

        x = self._images.rechunk((self.partition_size, -1, -1))
        starts = np.cumsum((0,) + x.chunks[0])
        self._bounds = list(zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True))
        blocks = list(x.to_delayed().ravel())
        b = self._box
        if self._n * b * (b // 2 + 1) * 12 <= MEMORY_BUDGET:
            prep = [dask.delayed(prepare_partition)(blk, self._geom_slice(np.arange(lo, hi)), box=b,
                                                    psize_A=self._psize, device=self.device)
                    for blk, (lo, hi) in zip(blocks, self._bounds, strict=True)]
            self._data = list(dask.persist(*prep))
        else:
            self._data = blocks

    def _geom_slice(self, sel: np.ndarray) -> dict[str, Any]:
        return {k: (None if v is None else {c: a[sel] for c, a in v.items()} if isinstance(v, dict) else v[sel])
                for k, v in self._geom.items()}

    def _map(self, idx: np.ndarray | None, fn: Any, per_part: dict[str, np.ndarray] | None = None,
             **kw: Any) -> list[Any]:
        """Delayed ``fn(partition data, geometry, local=rows, **kw)`` over the partitions holding the
        (sorted) particles ``idx`` (all when None); ``per_part`` arrays aligned with ``idx`` are sliced
        per partition and passed by name."""
        import dask

        parts = []
        for data, (lo, hi) in zip(self._data, self._bounds, strict=True):
            pos: slice | np.ndarray
            if idx is None:
                local, pos = None, slice(lo, hi)
            else:
                pos = np.flatnonzero((idx >= lo) & (idx < hi))
                if len(pos) == 0:
                    continue
                local = idx[pos] - lo
            extra = {k: v[pos] for k, v in (per_part or {}).items()}
            if local is not None:
                extra["local"] = local
            parts.append(dask.delayed(fn)(data, self._geom_slice(np.arange(lo, hi)), **kw, **extra))
        return parts

    def _estep(self, idx: np.ndarray | None, grids: Any, state: dict[str, Any] | None,
               fixed_post: np.ndarray | None = None, sums: bool = True) -> dict[str, Any]:
        """Full (``idx`` None) or subset E-step: posteriors, log evidence and the tree-summed class sums
        and noise power; with ``fixed_post`` only the sums of those weights."""
        import dask

        kw: dict[str, Any] = dict(box=self._box, psize_A=self._psize, pad=self.pad, r_max=self._r_max,
                                  device=self.device, hard=self.hard, sums=sums)
        if fixed_post is None:
            parts = self._map(idx, estep_partition, grids=dask.delayed(grids), state=state, **kw)
        else:
            parts = self._map(idx, estep_partition, per_part={"fixed_post": fixed_post}, grids=None,
                              state={"inv_noise": np.zeros((1, 1))}, **kw)
        get = dask.delayed(lambda d, k: d[k], pure=True)
        todo = {"post": [get(p, "post") for p in parts], "logev": [get(p, "logev") for p in parts]}
        sum_keys = (["sums"] if sums else []) + (["noise", "noise_n"] if fixed_post is None else [])
        trees = {k: tree_reduce([get(p, k) for p in parts], sum_reduce) for k in sum_keys}
        res = compute(todo, trees)
        out = {"post": np.concatenate(res[0]["post"]), "logev": np.concatenate(res[0]["logev"])}
        out.update(res[1])
        return out

    # -- M-step ----------------------------------------------------------------------------------
    def _maps(self, sums: np.ndarray, fsc_curves: np.ndarray | None = None) -> np.ndarray:
        """Class maps (K, b, b, b) from per-class half sums; FSC curves default to each class's own.
        Also sets ``half_volumes_`` (2, K, b, b, b): each half's maps, which the E-step scores the
        other half's particles against."""
        K = sums.shape[0]
        out = np.empty((K,) + (self._box,) * 3, dtype=np.float32)
        halves = np.zeros((2, K) + ((self._box,) * 3 if self.cross_half else (1, 1, 1)), dtype=np.float32)
        for k in range(K):
            if not self.fsc_filter:
                c = self.consensus_fsc_
            elif fsc_curves is not None:
                c = fsc_curves[k]
            else:
                c = mstep.fourier_fsc(sums[k], self._box, self.pad)
            out[k] = mstep.class_map(sums[k], self._box, self.pad, self._r_max, c, self.tau2_fudge)
            if self.cross_half:
                halves[:, k] = mstep.half_maps(sums[k], self._box, self.pad, self._r_max, c, self.tau2_fudge)
        self.half_volumes_ = halves
        return out

    def _grids(self, halves: np.ndarray) -> np.ndarray:
        """Projector grids (2, K, P, P, P//2+1) of each half's class maps (``cross_half``: particles of
        one half meet the other half's maps) or (1, K, ...) of the full maps, as model volumes."""
        if not self.cross_half:
            g = np.stack([fo.volume_transform(v, self.pad) for v in
                          mstep.model_volumes(self.volumes_, self.consensus_, self._solvent, self._focus)])
            return g[None]  # (1, K, ...): every particle meets the same maps
        return np.stack([np.stack([fo.volume_transform(v, self.pad) for v in
                                   mstep.model_volumes(h, self.consensus_, self._solvent, self._focus)])
                         for h in halves])

    def _fscs(self, sums: np.ndarray) -> np.ndarray:
        return np.stack([mstep.fourier_fsc(sums[k], self._box, self.pad) for k in range(sums.shape[0])])

    # -- setup -----------------------------------------------------------------------------------
    def _setup(self, rot: np.ndarray, shifts_px: np.ndarray, half: np.ndarray, ctf: dict[str, np.ndarray] | None,
               alpha_input: np.ndarray | None, groups: np.ndarray | None) -> None:
        """Consensus reconstruction, per-particle scales and the initial noise spectra."""
        from cryoframe.algorithms.reconstruct import Reconstructor

        t0 = time.perf_counter()
        rec = Reconstructor(self._box, self._psize, pad=self.pad, max_resolution_A=self._box * self._psize / self._r_max,
                            regulariser="fsc", tau2_fudge=self.tau2_fudge, device=self.device,
                            partition_size=self.partition_size)
        rec.fit(self._images, rot, shifts_px, half, ctf=ctf)
        self.consensus_ = rec.map_
        self.consensus_fsc_ = rec.fsc_
        if self._solvent is None and self.auto_mask:
            self._solvent = auto_solvent_mask(self.consensus_, self._psize)
            self.solvent_mask_auto_ = True
        mv = mstep.model_volumes(self.consensus_[None], self.consensus_, self._solvent, None)[0]
        import dask

        parts = self._map(None, scale_partition, consensus_ft=dask.delayed(fo.volume_transform(mv, self.pad)),
                          box=self._box, psize_A=self._psize, pad=self.pad, r_max=self._r_max, device=self.device)
        terms = np.concatenate(compute(*parts))  # (n, 3, nsh)
        tot = terms.sum(2)
        if self.scale == "optimal":
            a = tot[:, 1] / np.maximum(tot[:, 2], 1e-30)
            med = np.median(a)
            a = np.clip(a, 0.1 * med, 10 * med) if med > 0 else np.ones_like(a)
        elif self.scale == "input":
            a = np.asarray(alpha_input, dtype=np.float64)
        else:
            a = np.ones(self._n)
        self.alpha_ = a
        resid = terms[:, 0] - 2 * a[:, None] * terms[:, 1] + (a * a)[:, None] * terms[:, 2]
        self._group = np.zeros(self._n, dtype=np.int64) if groups is None else np.unique(groups, return_inverse=True)[1]
        self._geom["alpha"] = self.alpha_
        self._geom["group"] = self._group
        G = int(self._group.max()) + 1
        noise = np.zeros((G, resid.shape[1]))
        np.add.at(noise, self._group, resid)
        self.noise_spectra_ = self._spectra(noise, np.bincount(self._group, minlength=G))
        self.timings_["setup_s"] = time.perf_counter() - t0

    def _spectra(self, noise: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Noise power per component per group and shell, shrunk to the pooled spectrum (20 particles' worth)."""
        per_shell = self._layout["onehot"].sum(0).astype(np.float64)
        per_shell[per_shell == 0] = 1.0
        pooled = noise.sum(0) / max(counts.sum(), 1) / per_shell
        grp = noise / np.maximum(counts, 1)[:, None] / per_shell
        w = (counts / (counts + 20.0))[:, None]
        s = w * grp + (1 - w) * pooled[None]
        pos = s[:, 1:][s[:, 1:] > 0]
        return np.maximum(s, (pos.min() if pos.size else 1.0) * 1e-3)

    def _state(self, prior: np.ndarray, temperature: float = 1.0) -> dict[str, Any]:
        inv = 1.0 / self.noise_spectra_
        inv[:, 0] = 0.0
        r_lik = self._likelihood_radius()
        self._r_cur = min(self._r_max, r_lik + 3)
        return {"inv_noise": inv, "log_prior": np.log(np.maximum(prior, 1e-12)), "temperature": temperature,
                "r_lik": r_lik, "r_cur": self._r_cur, "same_maps": not self.cross_half}

    def _likelihood_radius(self) -> float:
        """Likelihood radius (cycles per box): the best class's FSC = 0.143 shell + 1 (RELION's
        current resolution: classes are compared only where they hold signal), at least 3."""
        fsc_c = getattr(self, "fsc_", None)
        if fsc_c is None:
            return self._r_max
        best = 0
        for c in np.atleast_2d(fsc_c):
            below = np.flatnonzero(np.asarray(c)[1:] < 0.143)
            best = max(best, int(below[0]) + 1 if len(below) else len(c) - 1)
        return float(min(self._r_max, max(3, best + 1)))

    # -- main loop -------------------------------------------------------------------------------
    def fit(self, images: Any, rot: np.ndarray, shifts_px: np.ndarray, half: np.ndarray, *, psize_A: float,
            ctf: dict[str, np.ndarray] | None = None, alpha: np.ndarray | None = None,
            groups: np.ndarray | None = None, solvent_mask: np.ndarray | None = None,
            focus_mask: np.ndarray | None = None, r_max: float | None = None, resume: bool = False) -> Class3D:
        """Classify ``images`` (dask (n, b, b), b the working box) with pose matrices ``rot``, shifts
        ``shifts_px`` (px of these images), half labels ``half`` (0/1, for the FSCs), CTF parameters,
        input scales ``alpha`` (for ``scale='input'``), noise groups, masks (b^3 in [0, 1]) and the
        likelihood/insertion radius ``r_max`` (cycles per box; default b/2)."""
        import dask.array as da

        self.timings_ = {}
        t_fit = time.perf_counter()
        self._images = images if isinstance(images, da.Array) else da.from_array(np.asarray(images),
                                                                                  chunks=(self.partition_size, -1, -1))
        self._n, self._box = int(images.shape[0]), int(images.shape[-1])
        self._psize = float(psize_A)
        self._r_max = float(r_max or self._box / 2)
        self._layout = freq_layout(self._box, self._r_max)
        self._solvent, self._focus = solvent_mask, focus_mask
        self.solvent_mask_auto_ = False
        self._geom = {"rot": rot, "shifts_px": shifts_px, "ctf": ctf, "half": np.asarray(half, dtype=np.int64)}
        self._partitions()
        K, n = self.n_classes, self._n
        if K > n:
            raise ValueError(f"{K} classes for {n} particles")
        per_epoch = max(1, math.ceil(n / (self.oem_batch * K)))
        self.n_oem_ = self.oem_epochs * per_epoch
        self.history_: list[dict[str, Any]] = []
        st: dict[str, Any]
        if resume:
            st = self._restore()
            if st["phase"] == "O-EM":
                st = self._choose_start(per_epoch, resume=st)
        else:
            self._setup(rot, shifts_px, half, ctf, alpha, groups)
            st = self._choose_start(per_epoch)
        self._fem(st)
        self.timings_["fit_s"] = time.perf_counter() - t_fit
        return self

    def _params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FIXED}

    def _save(self, st: dict[str, Any]) -> None:
        if self.checkpoint_dir is None:
            return
        arrays = {"volumes": self.volumes_, "half_volumes": self.half_volumes_, "consensus": self.consensus_, "consensus_fsc": self.consensus_fsc_,
                  "alpha": self.alpha_, "group": self._group, "noise": self.noise_spectra_, "prior": st["prior"],
                  "labels": st["labels"], "post": st["post"], "logev": st["logev"], "fsc": self.fsc_,
                  "osums": st.get("osums"), "counts": st.get("counts"),
                  "auto_mask": self._solvent if self.solvent_mask_auto_ else None}
        meta = {"it": st["it"], "phase": st["phase"], "done": st.get("done", False), "history": self.history_,
                "params": self._params(), "n": self._n, "box": self._box, "psize_A": self._psize, "r_max": self._r_max}
        save_checkpoint(self.checkpoint_dir, arrays, meta)

    def _restore(self) -> dict[str, Any]:
        if self.checkpoint_dir is None:
            raise FileNotFoundError("no checkpoint directory")
        arr, meta = load_checkpoint(self.checkpoint_dir)
        if meta["n"] != self._n or meta["box"] != self._box or abs(meta["r_max"] - self._r_max) > 1e-6:
            raise ValueError(f"checkpoint is for {meta['n']} particles at box {meta['box']} (r_max {meta['r_max']}), "
                             f"not {self._n} at box {self._box} (r_max {self._r_max})")
        bad = [k for k, v in meta["params"].items() if getattr(self, k) != v]
        if bad:
            raise ValueError("parameters differ from the checkpoint's: " +
                             ", ".join(f"{k}={getattr(self, k)!r} (checkpoint {meta['params'][k]!r})" for k in bad))
        self.volumes_, self.consensus_ = arr["volumes"], arr["consensus"]
        self.half_volumes_ = arr["half_volumes"]
        self.consensus_fsc_, self.alpha_, self._group = arr["consensus_fsc"], arr["alpha"], arr["group"]
        self.noise_spectra_, self.fsc_ = arr["noise"], arr["fsc"]
        if arr.get("auto_mask") is not None:  # the automatic mask is made once, from the first run's consensus
            self._solvent = arr["auto_mask"]
            self.solvent_mask_auto_ = True
        self._geom["alpha"], self._geom["group"] = self.alpha_, self._group
        self.history_ = meta["history"]
        st = {"it": meta["it"], "phase": meta["phase"], "prior": arr["prior"], "labels": arr["labels"],
              "post": arr["post"], "logev": arr["logev"], "done": meta["done"]}
        for k in ("osums", "counts"):
            st[k] = arr.get(k)
        return st

    def _choose_start(self, per_epoch: int, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``starts`` initialisations + O-EM, score each with a full E-step; keep the best.
        ``resume``: an O-EM checkpoint state of the single start to continue."""
        best = None
        for s in range(self.starts):
            t0 = time.perf_counter()
            vols, prior, hist = self._start(s, per_epoch, resume)
            st = self._state(prior)
            if self.starts > 1:  # starts compare their log-likelihoods over the same shells
                st["r_lik"] = st["r_cur"] = self._r_max
            e = self._estep(None, self._grids(self.half_volumes_), st)
            score = float(e["logev"].sum())
            log.info("class3d start %d: log-likelihood %.6g", s, score)
            if best is None or score > best[0]:
                best = (score, s, vols, e, hist, t0)
        assert best is not None
        score, s, vols, e, hist, t0 = best
        self.best_start_ = s
        self.history_ = hist
        self.volumes_ = vols
        if self.n_iter <= self.n_oem_:  # --iters ends within O-EM: report this E-step, keep the O-EM checkpoint
            return {"it": self.n_iter, "phase": "O-EM", "prior": e["post"].mean(0), "labels": e["post"].argmax(1),
                    "post": e["post"], "logev": e["logev"], "done": True}
        return self._fem_update(e, vols, None, it=len(hist) - 1, t0=t0, phase="F-EM")

    def _start(self, s: int, per_epoch: int, resume: dict[str, Any] | None
               ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Initialisation and O-EM of start ``s``: (maps, class prior, history)."""
        K, n = self.n_classes, self._n
        sim = float(self.class_similarity)
        if resume is not None:
            t_first, vols, prior = resume["it"], self.volumes_, resume["prior"]
            osums, counts, fsc_c, hist = resume["osums"], resume["counts"], self.fsc_, list(self.history_)
        else:
            rng = np.random.default_rng(np.random.SeedSequence([self.random_state, 3, s]))
            t0 = time.perf_counter()
            mask = self._focus if self._focus is not None else self._solvent
            ini = initial_volumes(self.init, K, n, self.oem_batch, rng,
                                  lambda idx, w: self._estep(idx, None, None, fixed_post=w)["sums"],
                                  lambda sums: self._maps(sums), mask)
            vols = self.volumes_ = (sim * self.consensus_[None] + (1 - sim) * ini["volumes"]).astype(np.float32)
            if self.cross_half:
                self.half_volumes_ = (sim * self.consensus_[None, None]
                                      + (1 - sim) * self.half_volumes_).astype(np.float32)
            fsc_c = self.fsc_ = self._fscs(ini["sums"])
            prior = np.full(K, 1.0 / K)
            osums = counts = None
            t_first = 0
            hist = [{"iteration": 0, "phase": "init", "mode": self.init, "start": s,
                     "time_s": time.perf_counter() - t0}]
        for t in range(t_first, min(self.n_oem_, self.n_iter)):
            t1 = time.perf_counter()
            epoch, b = divmod(t, per_epoch)
            perm = np.random.default_rng(np.random.SeedSequence([self.random_state, 31, s, epoch])).permutation(n)
            size = math.ceil(n / per_epoch)
            idx = np.sort(perm[b * size:(b + 1) * size])
            temp = 1.0 - sim * (1.0 - t / max(1, self.n_oem_))
            e = self._estep(idx, self._grids(self.half_volumes_), self._state(prior, temp))
            lr = self.oem_lr / (1.0 + t / per_epoch)
            osums = mstep.decay(osums, e["sums"], lr)
            counts = mstep.decay(counts, e["post"].sum(0).astype(np.float64), lr)
            if t % 10 == 0:
                fsc_c = self.fsc_ = self._fscs(osums)
            vols = self.volumes_ = self._maps(osums, fsc_c)
            prior = counts / counts.sum()
            sizes = e["post"].sum(0)
            ess = 1.0 / np.sum(e["post"].astype(np.float64) ** 2, axis=1)
            hist.append({"iteration": t + 1, "phase": "O-EM", "start": s, "batch": int(len(idx)), "learning_rate": lr,
                         "temperature": temp, "class_sizes": (sizes / len(idx) * n).round().astype(int).tolist(),
                         "log_likelihood": float(e["logev"].sum() / len(idx) * n), "mean_ess": float(ess.mean()),
                         "switches_pct": None, "rms_change": None, "time_s": time.perf_counter() - t1})
            if self.starts == 1:
                self.volumes_, self.fsc_, self.history_ = vols, fsc_c, hist
                self._save({"it": t + 1, "phase": "O-EM", "prior": prior, "labels": np.full(n, -1),
                            "post": np.zeros((0, K), np.float32), "logev": np.zeros(0), "osums": osums,
                            "counts": counts})
        self.fsc_ = fsc_c
        return vols, prior, hist

    def _fem_update(self, e: dict[str, Any], old_vols: np.ndarray, prev_labels: np.ndarray | None, *, it: int,
                    t0: float, phase: str) -> dict[str, Any]:
        """M-step after a full E-step ``e``; bookkeeping, history and checkpoint."""
        n = self._n
        post = e["post"]
        labels = post.argmax(1)
        sums = e["sums"]
        sizes = np.bincount(labels, minlength=self.n_classes)
        sums = self._refill(sums, labels, e["logev"], sizes)
        self.fsc_ = self._fscs(sums)
        self.volumes_ = self._maps(sums, self.fsc_)
        new = self._spectra(e["noise"], e["noise_n"])
        upto = np.arange(new.shape[1]) <= self._r_cur  # shells beyond the current size keep their estimate
        self.noise_spectra_ = np.where(upto[None], new, self.noise_spectra_)
        prior = post.sum(0).astype(np.float64) / n
        prior = np.maximum(prior, 1e-3 / self.n_classes)
        prior /= prior.sum()
        sw = None if prev_labels is None or np.any(prev_labels < 0) else float(np.mean(labels != prev_labels) * 100)
        rms = mstep.rms_change(self.volumes_, old_vols, sizes, self.consensus_, self._solvent)
        ess = 1.0 / np.sum(post.astype(np.float64) ** 2, axis=1)
        self.history_.append({"iteration": it + 1, "phase": phase, "class_sizes": sizes.tolist(),
                              "likelihood_radius": self._likelihood_radius(),
                              "log_likelihood": float(e["logev"].sum()), "mean_ess": float(ess.mean()),
                              "switches_pct": sw, "rms_change": rms, "time_s": time.perf_counter() - t0})
        log.info("class3d iteration %d (%s): switches %s %%, rms %.4g, sizes %s", it + 1, phase, sw, rms, sizes.tolist())
        st = {"it": it + 1, "phase": phase, "prior": prior, "labels": labels, "post": post, "logev": e["logev"]}
        st["done"] = sw is not None and (sw < self.switch_threshold or
                                         (self.rms_threshold is not None and rms < self.rms_threshold))
        self._save(st)
        return st

    def _refill(self, sums: np.ndarray, labels: np.ndarray, logev: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Give every class with < 0.2 % of the particles the worse-fitting half of the largest class."""
        small = np.flatnonzero(sizes < max(2, 0.002 * self._n))
        if len(small) == 0:
            return sums
        sums = sums.copy()
        for k in small:
            big = int(np.argmax(sizes))
            mem = np.flatnonzero(labels == big)
            if len(mem) < 4:
                continue
            worse = logev[mem] < np.median(logev[mem])
            idx = np.sort(mem)
            w = np.zeros((len(idx), 2), dtype=np.float32)
            w[np.arange(len(idx)), np.where(worse, 1, 0)] = 1.0
            part = self._estep(idx, None, None, fixed_post=w)["sums"]
            sums[big], sums[k] = part[0], part[1]
            labels = labels.copy()
            labels[mem[worse]] = k
            sizes = np.bincount(labels, minlength=self.n_classes)
            log.info("class3d: class %d emptied; split the largest class %d", k, big)
        return sums

    def _fem(self, st: dict[str, Any]) -> None:
        it = st["it"]
        while not st.get("done") and it < self.n_iter:
            t0 = time.perf_counter()
            old = self.volumes_
            e = self._estep(None, self._grids(self.half_volumes_), self._state(st["prior"]))
            st = self._fem_update(e, old, st["labels"], it=it, t0=t0, phase="F-EM")
            it = st["it"]
        self.n_iter_ = it
        self.posterior_ = st["post"]
        self.labels_ = st["labels"].astype(np.int64)
        self.class_posterior_ = self.posterior_.max(1)
        self.ess_ = 1.0 / np.sum(self.posterior_.astype(np.float64) ** 2, axis=1)
        self.log_likelihood_ = st["logev"]
        self.class_sizes_ = np.bincount(self.labels_, minlength=self.n_classes)
        from cryoframe.geometry.fsc import shell_frequencies

        self.frequencies_ = shell_frequencies(self._box, self._psize)
        nyq = int(math.floor(self._r_max))
        res = []
        for c in self.fsc_:
            cut = np.asarray(c, dtype=float).copy()
            cut[nyq + 1:] = 0.0
            res.append(resolution_at(cut, self._box, self._psize, 0.143))
        self.resolution_A_ = np.asarray(res)
