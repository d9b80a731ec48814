"""The :class:`AbInitio` estimator: K volumes from particles without poses by minibatch SGD.

One iteration ``t`` (hyperparameters from :class:`Schedule`):

1. draw a seeded minibatch of ``minibatch(t)`` particles;
2. for each class search every particle's pose (branch and bound, :class:`PoseSearch`) against the
   class volume up to ``resolution_A(t)``; the class evidence is ``log sum exp(-E)`` over the final
   candidates;
3. class posteriors ``p = (1 - s) softmax(log pi + evidence) + s / K`` with ``s`` the class
   similarity (annealed to 0), so early on every particle feeds every class;
4. the gradient step: each class's Fourier sums (``sum w CTF X / sigma^2`` and
   ``sum w CTF^2 / sigma^2`` on the padded grid of a Fourier-cropped working box, inserted with
   :func:`cryoframe.geometry.fourier.insert_slices` at the candidate poses with weights
   ``p_k x pose posterior``, once per symmetry operator) move towards the minibatch's:
   ``S <- (1 - lr) S + S_batch`` — SGD on the regularised likelihood preconditioned by its diagonal
   Hessian; the volume is ``S_data / (S_weight + 1 / tau^2)`` (``tau^2`` the volume's shell power,
   :func:`cryoframe.geometry.backprojector.map_from_sums`), windowed by a soft sphere;
5. the noise model: per-shell (``coloured``) or flat (``white``) ``sigma^2``, starting at the image
   power times ``noise_init_sigmascale^2`` (flat posteriors), annealed towards the residual power at
   the best poses (prior weight ``noise_priorw`` particles);
6. empty classes (running size below ``empty_class_fraction / K``) restart from a perturbed copy of
   the largest class (until the final phase).

After the SGD iterations, ``final_passes`` passes over all particles search poses down to
``fine_step_deg`` at the full resolution (K > 1: under each particle's most probable class;
each pass but the last re-estimates the volumes from all particles), and the class maps are
reconstructed at the full box with :class:`cryoframe.algorithms.reconstruct.Reconstructor` (half
maps of a seeded split, FSC resolution), weighted by the class posteriors
(:mod:`cryoframe.algorithms.abinitio.final`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cryoframe.algorithms.abinitio import checkpoint as ckpt
from cryoframe.algorithms.abinitio import final as fin
from cryoframe.algorithms.abinitio.data import (
    lowpass_mask,
    noise_scales,
    particle_components,
    shell_power,
    shell_tau2,
)
from cryoframe.algorithms.abinitio.schedule import Schedule
from cryoframe.algorithms.abinitio.starts import pick_classes
from cryoframe.algorithms.abinitio.validate import validate
from cryoframe.algorithms.posesearch import Components, PoseSearch, Projector, SearchResult
from cryoframe.backend import thread_map
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.backprojector import map_from_sums
from cryoframe.geometry.masks import soft_sphere
from cryoframe.geometry.symmetry import symmetry_matrices

__all__ = ["AbInitio"]

CKPT_NAME = ckpt.CKPT_NAME


class AbInitio:
    """Ab-initio reconstruction of ``n_classes`` volumes (cryoSPARC's parameter names).

    Parameters
    ----------
    n_classes : K.
    psize_A : pixel size of the images (Å/px).
    symmetry : point group imposed on the volumes (``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I``).
    max_resolution_A, initial_resolution_A : resolution (Å) of the final and the initial iterations;
        ``initial_resolution_A`` None: cryoSPARC's 35 Å, but at least 6.4 cycles per box (box size in
        Å / 6.4) so that a particle filling half a small box is resolved by a few elements when the
        SGD starts (at 35 Å a 128 Å box carries no pose information per particle), and never finer
        than ``max_resolution_A`` (:meth:`initial_resolution`).
    initial_iterations, intermediate_iterations, final_iterations : the three phases (:class:`Schedule`).
        ``intermediate_iterations`` None: 40 for one class, 80 for several (:meth:`n_intermediate`).
    initial_minibatch, final_minibatch : particles per iteration in the initial / final phase.
    initial_learning_rate, final_learning_rate : SGD step (fraction of the sums replaced per iteration).
    noise_model : ``coloured`` (per shell) or ``white`` (flat) noise power.
    noise_init_sigmascale : initial noise sd as a multiple of the images' (flattens early posteriors).
    noise_priorw : weight (in particles) of the initial noise estimate against the data's.
    class_similarity, class_similarity_anneal_start, class_similarity_anneal_end : see :class:`Schedule`
        (iterations; defaults: the start of the intermediate phase and :meth:`similarity_anneal_length`
        iterations later).
    empty_class_fraction : a class whose running share falls below this / K is re-initialised.
    coarse_step_deg, fine_step_deg, shift_range_px, shift_step_px, n_candidates : the pose search
        (:class:`cryoframe.algorithms.posesearch.PoseSearch`); shifts in px of the images.
        ``coarse_step_deg`` is the exhaustive grid of the SGD iterations before the final phase.
    final_coarse_step_deg : the coarse grid of the search of the final passes.  It is scored at the
        full search resolution on the shift lattice that resolution needs, not at the radius the step
        resolves: at SNR 0.05 the low-resolution ranking drops the right basin before the refinement
        (600 particles searched against the SGD map of the 4000-particle bench: 28.7 deg median pose
        error with a 12 deg grid scored at 16.8 Å on a 2 px lattice, 22.1 deg scored at 12 Å on a 1 px
        lattice, 21.3 deg with a 15 deg grid at 12 Å, in 0.8x the time of the 12 deg grid).
    window_inner_radius, window_outer_radius : the soft spherical window (fractions of half the box).
    final_passes : passes over all particles after SGD (>= 1).
    soft_candidates : grid poses per particle averaged over (posterior weights) before the final phase.
    tau2_fudge : regularisation T (the volume prior ``1 / (T tau^2)``).
    random_state : seed of the minibatches, initial volumes and half split.
    n_starts : independent random starts run through the initial phase; the one whose volumes best
        explain one fixed set of particles (lowest mean best-pose error under the initial
        noise model, :meth:`_start_score`) is continued (the others are dropped, recorded in
        ``events_``).  SGD from random volumes is start-dependent.  K > 1: the K class maps are
        then chosen among all starts' K x ``n_starts`` maps as the K that explain those particles
        best together (:func:`~cryoframe.algorithms.abinitio.starts.pick_classes`; class shares
        reset to 1/K): one start often merges two structures into one map that another start
        separates (``bench_abinitio.py --classes 4``: ARI 0.40 with the best start's maps, 0.51
        with maps chosen across starts).
    scale_prior_sd : per-particle contrast scale ``~ N(1, sd^2)`` marginalised out of every pose score
        (:class:`cryoframe.algorithms.posesearch.PoseSearch`); None: no scale.  Without it, particles of
        lower contrast than the reference pick the orientations of least projected power.
    normalise_noise : divide each particle by its noise level over the median's, estimated from the power of
        the outer half of its transform (:func:`~cryoframe.algorithms.abinitio.data.noise_scales`): for
        particles not normalised at extraction (raw counts, exposures of different dose).  Off by default:
        at high SNR (noiseless projections) the outer shells hold signal that varies with the view.
    device : ``cpu`` or ``gpu`` (:func:`cryoframe.backend.get_array_module`).
    checkpoint_dir : state after every ``checkpoint_every`` iterations, for ``fit(resume=True)``.

    Learned attributes
    ------------------
    ``volumes_`` (K, b, b, b) float32 class maps at the full box (Å/px ``psize_A``), ``half_maps_``,
    ``resolution_A_`` (K,) FSC 0.143 of the half maps, ``fsc_`` (K, b // 2 + 1),
    ``poses_`` (n, 3) rotation vectors (rad), ``rot_`` (n, 3, 3), ``shifts_px_`` (n, 2) (px of the
    images, the translation that centres the particle), ``labels_`` (n,), ``posteriors_`` (n, K),
    ``class_sizes_`` (K,), ``noise_scale_`` (n,) the factors its images were divided by (ones
    unless ``normalise_noise``), ``history_`` (per iteration), ``slices_`` (snapshots of the central
    slices), ``working_box_``, ``n_iter_``, ``events_`` (class re-initialisations).
    """

    def __init__(self, n_classes: int = 1, *, psize_A: float, symmetry: str = "C1", max_resolution_A: float = 12.0,
                 initial_resolution_A: float | None = None, initial_iterations: int = 40,
                 intermediate_iterations: int | None = None, final_iterations: int = 0, initial_minibatch: int = 300,
                 final_minibatch: int = 600, initial_learning_rate: float = 0.3, final_learning_rate: float = 0.2,
                 noise_model: str = "coloured", noise_init_sigmascale: float = 1.0, noise_priorw: float = 50.0,
                 class_similarity: float = 0.1, class_similarity_anneal_start: int | None = None,
                 class_similarity_anneal_end: int | None = None, empty_class_fraction: float = 0.2,
                 coarse_step_deg: float = 15.0, fine_step_deg: float = 1.875, shift_range_px: float = 6.0,
                 shift_step_px: float = 2.0, n_candidates: int = 4, window_inner_radius: float = 0.85,
                 window_outer_radius: float = 0.99, final_passes: int = 1, soft_candidates: int = 24, tau2_fudge: float = 4.0, pad: int = 2,
                 random_state: int = 0, device: str = "cpu", checkpoint_dir: str | os.PathLike[str] | None = None,
                 checkpoint_every: int = 10, scale_prior_sd: float | None = 0.3, n_starts: int = 4,
                 final_coarse_step_deg: float = 15.0, normalise_noise: bool = False) -> None:
        self.n_classes = n_classes
        self.normalise_noise = normalise_noise
        self.psize_A = psize_A
        self.symmetry = symmetry
        self.max_resolution_A = max_resolution_A
        self.initial_resolution_A = initial_resolution_A
        self.initial_iterations = initial_iterations
        self.intermediate_iterations = intermediate_iterations
        self.final_iterations = final_iterations
        self.initial_minibatch = initial_minibatch
        self.final_minibatch = final_minibatch
        self.initial_learning_rate = initial_learning_rate
        self.final_learning_rate = final_learning_rate
        self.noise_model = noise_model
        self.noise_init_sigmascale = noise_init_sigmascale
        self.noise_priorw = noise_priorw
        self.class_similarity = class_similarity
        self.class_similarity_anneal_start = class_similarity_anneal_start
        self.class_similarity_anneal_end = class_similarity_anneal_end
        self.empty_class_fraction = empty_class_fraction
        self.coarse_step_deg = coarse_step_deg
        self.fine_step_deg = fine_step_deg
        self.shift_range_px = shift_range_px
        self.shift_step_px = shift_step_px
        self.n_candidates = n_candidates
        self.scale_prior_sd = scale_prior_sd
        self.n_starts = n_starts
        self.final_coarse_step_deg = final_coarse_step_deg
        self._start = 0
        self.window_inner_radius = window_inner_radius
        self.window_outer_radius = window_outer_radius
        self.final_passes = final_passes
        self.soft_candidates = soft_candidates
        self.tau2_fudge = tau2_fudge
        self.pad = pad
        self.random_state = random_state
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every

    # -- set-up -------------------------------------------------------------------------------------
    def initial_resolution(self, box: int | None = None) -> float:
        """The initial resolution (Å) for images of ``box`` px (see ``initial_resolution_A``)."""
        if self.initial_resolution_A is not None:
            return float(self.initial_resolution_A)
        box = box or getattr(self, "box_", None)
        auto = 35.0 if not box else min(35.0, box * self.psize_A / 6.4)
        return max(float(self.max_resolution_A), auto)

    def n_intermediate(self) -> int:
        """The intermediate iterations: ``intermediate_iterations``, or by default 40 for K = 1 and 80
        for K > 1.  Classes keep separating while the resolution anneals (``bench_abinitio.py
        --classes 4``: ARI 0.51 with 40, 0.58 with 80), one class does not gain from it (median pose
        error 22.6 deg with 40, 22.8 with 80, ad hoc, at 1.4x the time)."""
        if self.intermediate_iterations is not None:
            return int(self.intermediate_iterations)
        return 40 if self.n_classes == 1 else 80

    def similarity_anneal_length(self) -> int:
        """Default length of the class-similarity anneal: a tenth of the intermediate iterations (at
        least 1), so the blurring of the class assignments that lets similar classes form in the
        initial phase is gone while the resolution still anneals.  Blurring through the whole
        intermediate phase keeps classes that formed merged from separating (``bench_abinitio.py
        --classes 4``, from the same initial-phase state, ad hoc: ARI 0.60 with the similarity
        annealed over all 80 intermediate iterations, 0.72 over 20, 0.74 over 8, 0.77 with none; another
        seed: 0.64, 0.65 over 8, 0.65 with none)."""
        return max(1, self.n_intermediate() // 10)

    def schedule(self, box: int | None = None) -> Schedule:
        """The iteration plan of these parameters (for images of ``box`` px)."""
        s = self.initial_iterations
        e = self.initial_iterations + self.n_intermediate()
        a0 = s if self.class_similarity_anneal_start is None else self.class_similarity_anneal_start
        if self.class_similarity_anneal_end is None:
            a1 = min(e, a0 + self.similarity_anneal_length())
        else:
            a1 = self.class_similarity_anneal_end
        return Schedule(self.initial_iterations, self.n_intermediate(), self.final_iterations,
                        self.initial_minibatch, self.final_minibatch, self.initial_resolution(box),
                        self.max_resolution_A, self.initial_learning_rate, self.final_learning_rate,
                        self.class_similarity, a0, max(a0, a1))

    def _validate(self, n: int, box: int) -> None:
        """Raise :class:`~cryoframe.errors.InputError` for parameters that cannot run on ``n`` particles
        of ``box`` px (:func:`~cryoframe.algorithms.abinitio.validate.validate`)."""
        validate(self, n, box)

    # -- fit ----------------------------------------------------------------------------------------
    def fit(self, images: Any, ctf_params: dict[str, np.ndarray] | None = None, *, resume: bool = False,
            progress: Any = None) -> AbInitio:
        """Fit to ``images`` (n, b, b) (NumPy or dask) with CTF parameters (n,) arrays (or None)."""
        from cryoframe.backend import get_array_module

        t_start = time.perf_counter()
        n, box = int(images.shape[0]), int(images.shape[-1])
        self._validate(n, box)
        xp = get_array_module(self.device)
        self._xp = xp
        sched = self.schedule(box)
        self.schedule_ = sched
        self.box_ = box
        r_max = min(box * self.psize_A / self.max_resolution_A, box / 2 - 1)
        self.r_max_ = r_max
        wb = min(box, 2 * int(math.ceil(r_max)) + 4)
        wb += wb % 2
        self.working_box_ = wb
        comps = Components(r_max)
        self._comps = comps
        self._sym = symmetry_matrices(self.symmetry)
        X, C, P = particle_components(images, np.arange(n), comps, box, self.psize_A, ctf_params,
                                      noise_power=self.normalise_noise)
        self.noise_scale_ = np.ones(n) if P is None else noise_scales(P)
        if P is not None:
            X /= self.noise_scale_[:, None].astype(np.float32)
        self._X, self._C = xp.asarray(X), xp.asarray(C)
        # the final search scores its coarse grid at the full search radius (and so on the shift
        # lattice that radius needs, 1 px at 12 Å in a 64 px box of 2 Å/px) rather than at the radius the
        # grid step resolves: at low SNR the low-resolution ranking loses the right basin before the
        # refinement sees it (bench_abinitio.py K = 1: median pose error 29.1 -> 22.6 deg, 14 -> 20% within 10 deg)
        self._search = PoseSearch(coarse_step_deg=self.final_coarse_step_deg, fine_step_deg=self.fine_step_deg,
                                  shift_range_px=self.shift_range_px, shift_step_px=self.shift_step_px,
                                  n_candidates=self.n_candidates, scale_prior_sd=self.scale_prior_sd,
                                  coarse_radius=r_max)
        # before the final phase: soft assignment over the best poses of the exhaustive grid (no
        # branching), so early gradients average over the plausible poses.  The grid is scored up to
        # the radius its step resolves (PoseSearch's level-0 radius, 1.6 / step) and the candidates
        # are rescored at the current resolution (bench_abinitio.py, 4000 particles: K = 1 264 s ->
        # 189 s with the pose error 28.1 -> 29.1 deg; K = 4 1081 s -> 630 s, ARI 0.39 -> 0.40)
        self._soft = PoseSearch(coarse_step_deg=self.coarse_step_deg, fine_step_deg=self.coarse_step_deg,
                                shift_range_px=self.shift_range_px, shift_step_px=self.shift_step_px,
                                n_candidates=self.soft_candidates, bound=False, scale_prior_sd=self.scale_prior_sd)
        self._window = soft_sphere(wb, self.window_inner_radius * wb / 2,
                                   max(0.0, (self.window_outer_radius - self.window_inner_radius) * wb / 2))
        self.history_: list[dict[str, Any]] = []
        self.slices_: list[dict[str, Any]] = []
        self.events_: list[dict[str, Any]] = []
        start = 0
        if resume:
            start = self._load_checkpoint()
            sched = self.schedule_  # defaulted counts and windows as the checkpointed run had them
        else:
            # white initial noise: the image power of the outer shells (noise-dominated), scaled
            p0 = shell_power(X[: min(n, 2000)], comps)
            flat = np.full_like(p0, float(np.median(p0[len(p0) // 2:])))
            self._sigma2_init = flat * self.noise_init_sigmascale ** 2
            self._start = 0  # a refit of this estimator starts from start 0's streams again
            self._fresh_state(flat, n)
            if self.n_starts > 1:
                start = self._best_start(flat, n, t_start)
        r_now = self.r_max_ if start >= sched.n_iter else self._r_at(start)
        self._volumes_w = self._volumes(r_now)
        for t in range(start, sched.n_iter):
            self._iteration(t, n, t_start)
            if progress is not None:
                progress(t + 1, sched.n_iter)
            if self.checkpoint_dir is not None and ((t + 1) % self.checkpoint_every == 0 or t + 1 == sched.n_iter):
                self._save_checkpoint(t + 1)
        self._final(images, ctf_params, n, t_start)
        self.__dict__.pop("_projectors", None)  # the working volumes' transforms: not kept past the fit
        self.n_iter_ = sched.n_iter
        return self

    def _fresh_state(self, flat: np.ndarray, n: int) -> None:
        """Noise at its initial estimate, equal class sizes, random initial volumes of the current
        start, empty records."""
        K = self.n_classes
        self._sigma2_data = flat.copy()
        self._sigma2_n = 0.0
        self._sizes = np.full(K, 1.0 / K)
        self._sums = [self._initial_sums(k, n) for k in range(K)]
        self.history_, self.slices_, self.events_ = [], [], []

    def _best_start(self, flat: np.ndarray, n: int, t_start: float) -> int:
        """Run the initial phase from ``n_starts`` random starts and keep the best; returns the next
        iteration.  K > 1: the K class maps are then chosen among all starts' (:func:`pick_classes`)."""
        K = self.n_classes
        trial = max(1, min(self.schedule_.n_iter, self.initial_iterations))
        scores: list[float] = []
        evs: list[np.ndarray] = []
        snaps: list[dict[str, Any]] = []
        for st in range(self.n_starts):
            self._start = st
            if st > 0:  # start 0 is the state fit() just built
                self._fresh_state(flat, n)
            self._volumes_w = self._volumes(self._r_at(0))
            for t in range(trial):
                self._iteration(t, n, t_start)
            score, ev = self._start_score(flat, n, trial - 1)
            scores.append(score)
            evs.append(ev)
            snaps.append(ckpt.snapshot(self))
        best = int(np.argmin(scores))
        ckpt.restore(self, snaps[best])
        event: dict[str, Any] = {"iteration": trial, "event": "starts", "mean_error": scores, "chosen": best}
        if K > 1:
            picks = pick_classes(np.concatenate(evs, axis=1), K)
            self._sums = [snaps[j // K]["_sums"][j % K] for j in picks]
            self._sizes = np.full(K, 1.0 / K)
            event["classes_from"] = [[j // K, j % K] for j in picks]  # [start, class] of each class
        self.events_.append(event)
        return trial

    def _start_score(self, flat: np.ndarray, n: int, t: int) -> tuple[float, np.ndarray]:
        """How well a start's volumes explain one fixed set of particles (the same for every start;
        not held out of the minibatches): their mean best-pose error at iteration ``t``'s resolution
        under the initial white noise ``flat`` (so every start is scored by one yardstick, whatever
        its own noise estimate); also the particles' log evidences (b, K) for each class."""
        idx = np.sort(self._rng_fixed().choice(n, size=min(n, 4 * self.initial_minibatch), replace=False))
        res, ev = self._search_all(idx, None, self._r_at(t), full=False, soft=True, w=self._weights(flat))
        post = self._posteriors(ev, 0.0)
        return float(np.mean(np.sum(post * np.stack([r.error[:, 0] for r in res], 1), 1))), ev

    def _rng_fixed(self) -> np.random.Generator:
        """A stream that is the same for every start (the scoring particles of :meth:`_start_score`)."""
        return np.random.default_rng(np.random.SeedSequence([self.random_state, 17, 99]))

    def _r_at(self, t: int) -> float:
        """Search/insertion radius (cycles per box) at iteration ``t``."""
        return min(self.r_max_, self.box_ * self.psize_A / self.schedule_.resolution_A(t))

    def _rng(self, *keys: int) -> np.random.Generator:
        start = [self._start] if self._start else []  # start 0 keeps the streams of single-start runs
        return np.random.default_rng(np.random.SeedSequence([self.random_state, 17, *start, *keys]))

    def _noise_weights(self, t: int | None) -> np.ndarray:
        """Weights ``mult / (2 sigma^2)`` (m,) float32 at the components for iteration ``t`` (None: final)."""
        a = 1.0 if t is None else self.schedule_.anneal(t)
        return self._weights((1 - a) * self._sigma2_init + a * self._sigma2_data)

    def _weights(self, s2: np.ndarray) -> np.ndarray:
        """Weights ``mult / (2 sigma^2)`` (m,) float32 at the components of the shell noise power ``s2``
        (flattened to its mean for the ``white`` noise model)."""
        if self.noise_model == "white":
            sh = np.rint(self._comps.radius).astype(np.int64)
            s2 = np.full_like(s2, float(np.mean(s2[np.minimum(sh, len(s2) - 1)])))
        sh = np.minimum(np.rint(self._comps.radius).astype(np.int64), len(s2) - 1)
        return (self._comps.mult / (2.0 * s2[sh])).astype(np.float32)

    def _initial_sums(self, k: int, n: int) -> np.ndarray:
        """Seeded random initial volume: a minibatch inserted at random poses (the data's scale and
        weights) plus a random smooth density of equal power within the window, band-limited to the
        initial resolution; returned as sums ``(W Re V, W Im V, W)``."""
        from scipy.spatial.transform import Rotation

        g = self._rng(1, k)
        idx = g.choice(n, size=min(n, self.initial_minibatch), replace=False)
        rot = Rotation.random(len(idx), random_state=g).as_matrix()
        r0 = self._r_at(0)
        sums = self._batch_sums(idx, rot[:, None], np.zeros((len(idx), 1, 2)), np.ones((len(idx), 1)),
                                self._noise_weights(0), r0)
        wb = self.working_box_
        blob = to_np(map_from_sums(self._xp.asarray(sums), wb, self.pad, None, r0, self._xp))
        field = np.asarray(fo.icfftn(fo.cfftn(g.standard_normal((wb,) * 3)) * lowpass_mask(wb, r0), wb))
        field *= soft_sphere(wb, 0.3 * wb, 0.1 * wb)
        field *= np.std(blob) / max(float(np.std(field)), 1e-30)
        v = fo.volume_transform(blob + field, self.pad)
        wgt = sums[..., 2]
        return np.stack([wgt * v.real, wgt * v.imag, wgt], axis=-1)

    def _batch_sums(self, idx: np.ndarray, rot: np.ndarray, shifts: np.ndarray, wts: np.ndarray, w: np.ndarray,
                    r: float) -> np.ndarray:
        """Fourier sums (:func:`cryoframe.geometry.fourier.new_sums`) of particles ``idx`` at poses
        ``rot`` (b, T, 3, 3), shifts ``shifts`` (b, T, 2) with weights ``wts`` (b, T), whitened by the noise weights ``w``, up to radius ``r``."""
        xp = self._xp
        wb, comps = self.working_box_, self._comps
        m = comps.count(r)
        sums = fo.new_sums(wb, self.pad, xp)
        b, T = wts.shape
        live = wts > 1e-3 * wts.max(initial=0.0)
        pi, ti = np.nonzero(live)
        if len(pi) == 0:
            return to_np(sums)
        inv_sigma = xp.asarray(np.sqrt(2.0 * w[:m] / comps.mult[:m]), dtype=xp.float32)
        x = self._X[xp.asarray(idx[pi]), :m] * comps.phases(shifts[pi, ti], self.box_, m, xp) * inv_sigma
        c = self._C[xp.asarray(idx[pi]), :m] * inv_sigma
        rr = rot[pi, ti]
        ww = wts[pi, ti]
        sym = self._sym
        if len(sym) > 1:
            rr = np.einsum("gij,njk->ngik", sym, rr).reshape(-1, 3, 3)
            x = xp.repeat(x, len(sym), axis=0)
            c = xp.repeat(c, len(sym), axis=0)
            ww = np.repeat(ww, len(sym))
        for s in range(0, len(rr), 4096):
            sl = slice(s, s + 4096)
            fo.insert_slices(sums, xp.asarray(rr[sl]) if xp is not np else rr[sl], comps.scatter(x[sl], wb, xp),
                             comps.scatter(c[sl], wb, xp), ww[sl], wb, self.pad, r, xp)
        fo.enforce_hermitian(sums, xp)
        return to_np(sums)

    def _volume(self, k: int, r: float) -> np.ndarray:
        """Working-box volume of class ``k``: regularised division of its sums, windowed."""
        xp = self._xp
        wb = self.working_box_
        sums = xp.asarray(self._sums[k])
        raw = to_np(map_from_sums(sums, wb, self.pad, None, r, xp))
        tau2 = shell_tau2(raw, wb)
        from cryoframe.geometry.backprojector import shell_mean_weight

        mw = shell_mean_weight(sums[..., 2], wb, self.pad, xp)
        reg = 1.0 / (self.tau2_fudge * np.maximum(tau2, 1e-12 * max(tau2.max(), 1e-30)))
        reg = np.minimum(reg, 1e3 * np.maximum(mw, 1e-30))
        vol = to_np(map_from_sums(sums, wb, self.pad, reg, r, xp))
        return (vol * self._window).astype(np.float32)

    def _volumes(self, r: float) -> list[np.ndarray]:
        """Every class's working-box volume (:meth:`_volume`)."""
        return self._per_class(lambda k: self._volume(k, r))

    def _per_class(self, fn: Callable[[int], Any]) -> list[Any]:
        """``fn(k)`` for every class ``k``, in threads on the CPU: each class's Fourier sums and volume
        are its own (the same arithmetic in any order), and the compiled insertion and the FFTs
        release the GIL."""
        return thread_map(fn, range(self.n_classes), 1 if self._xp is not np else None)

    def _projector(self, k: int) -> Projector:
        """Class ``k``'s projector, kept while its working volume is the same array: an iteration's
        search and noise update, and a final pass's blocks, share it (its transform and bound)."""
        cache: dict[int, tuple[np.ndarray, Projector]] = self.__dict__.setdefault("_projectors", {})
        vol = self._volumes_w[k]
        if k not in cache or cache[k][0] is not vol:
            cache[k] = (vol, Projector(vol, self._comps, self.pad, self._xp))
        return cache[k][1]

    def _search_all(self, idx: np.ndarray, t: int | None, r: float, full: bool, soft: bool = False,
                    w: np.ndarray | None = None, classes: list[int] | None = None
                    ) -> tuple[list[SearchResult], np.ndarray]:
        """Pose search of particles ``idx`` against every class (or ``classes``) under the noise
        weights ``w`` (default: iteration ``t``'s); returns the results and the log evidences (b, K)."""
        xp = self._xp
        m = self._comps.count(r)
        w = self._noise_weights(t) if w is None else w
        x = self._X[xp.asarray(idx), :m]
        c = self._C[xp.asarray(idx), :m]
        res = []
        for k in range(self.n_classes) if classes is None else classes:
            proj = self._projector(k)
            search = self._soft if soft else self._search
            res.append(search.search(proj, x, c, xp.asarray(w[:m]), self.box_, r, full=full))
        ev = np.stack([rr.log_evidence for rr in res], 1)
        return res, ev

    def _posteriors(self, ev: np.ndarray, similarity: float) -> np.ndarray:
        lp = ev + np.log(np.maximum(self._sizes, 1e-6))[None]
        lp -= lp.max(1, keepdims=True)
        p = np.exp(lp)
        p /= p.sum(1, keepdims=True)
        K = self.n_classes
        return (1 - similarity) * p + similarity / K

    def _iteration(self, t: int, n: int, t_start: float) -> None:
        sched = self.schedule_
        t0 = time.perf_counter()
        r = self._r_at(t)
        bsz = min(n, sched.minibatch(t))
        idx = np.sort(self._rng(2, t).choice(n, size=bsz, replace=False))
        if sched.phase(t) == "final":  # at the full resolution: the final passes' search
            res, ev = fin.final_search(self, idx, r)
        else:
            res, ev = self._search_all(idx, t, r, full=False, soft=True)
        sim = sched.similarity(t) if self.n_classes > 1 else 0.0
        post = self._posteriors(ev, sim)
        lr = sched.learning_rate(t)
        self._update_noise(idx, res, post, r)
        w = self._noise_weights(t)
        batch = self._per_class(lambda k: self._batch_sums(idx, res[k].rot, res[k].shift,
                                                           post[:, k:k + 1] * res[k].weight, w, r))
        for k, bs in enumerate(batch):
            self._sums[k] = (1 - lr) * self._sums[k] + bs
        frac = post.mean(0)
        self._sizes = (1 - lr) * self._sizes + lr * frac
        if self.n_classes > 1 and sched.phase(t) != "final":
            self._reinit_empty(t)
        self._volumes_w = self._volumes(r)
        stats = res[0].stats
        self.history_.append({
            "iteration": t + 1, "phase": sched.phase(t), "resolution_A": self.box_ * self.psize_A / r,
            "learning_rate": lr, "minibatch": bsz, "class_similarity": sim,
            "class_sizes": self._sizes.tolist(), "noise_anneal": sched.anneal(t),
            "mean_error": float(np.mean([rr.error[:, 0].mean() for rr in res])),
            "pruned_fraction": stats["pruned"] / max(1.0, stats["pruned"] + stats["scored"]),
            "time_s": time.perf_counter() - t0, "elapsed_s": time.perf_counter() - t_start})
        every = max(1, sched.n_iter // 12)
        if t % every == 0 or t + 1 == sched.n_iter:
            self.slices_.append({"iteration": t + 1, "slices": [v[self.working_box_ // 2].copy() for v in self._volumes_w]})

    def _update_noise(self, idx: np.ndarray, res: list[SearchResult], post: np.ndarray, r: float) -> None:
        """Residual power per shell at each particle's best pose of its most probable class."""
        xp = self._xp
        m = self._comps.count(r)
        best = post.argmax(1)
        resid = np.empty((len(idx), m), dtype=np.complex64)
        for k in range(self.n_classes):
            sel = np.flatnonzero(best == k)
            if len(sel) == 0:
                continue
            P = self._projector(k).slices(res[k].rot[sel, 0], m)
            x = self._X[xp.asarray(idx[sel]), :m] * self._comps.phases(res[k].shift[sel, 0], self.box_, m, xp)
            resid[sel] = to_np(x - self._C[xp.asarray(idx[sel]), :m] * P)
        p = shell_power(resid, self._comps)
        ns = int(np.ceil(r))
        nb = float(len(idx))
        wold = self.noise_priorw + self._sigma2_n
        upd = (wold * self._sigma2_data + nb * p) / (wold + nb)
        self._sigma2_data[: ns + 1] = upd[: ns + 1]
        self._sigma2_n = min(self._sigma2_n + nb, 10 * self.noise_priorw)

    def _reinit_empty(self, t: int) -> None:
        K = self.n_classes
        low = np.flatnonzero(self._sizes < self.empty_class_fraction / K)
        for k in low:
            big = int(np.argmax(self._sizes))
            g = self._rng(3, t, int(k))
            new = 0.5 * self._sums[big]
            new[..., :2] *= (1.0 + 0.3 * g.standard_normal(new.shape[:3]))[..., None]
            self._sums[k] = new
            self._sizes[k] = self._sizes[big] = self._sizes[big] / 2
            self.events_.append({"iteration": t + 1, "class": int(k), "from_class": big})

    # -- final passes and maps: see :mod:`cryoframe.algorithms.abinitio.final` ------------------------
    def _final(self, images: Any, ctf_params: dict[str, np.ndarray] | None, n: int, t_start: float) -> None:
        fin.final_passes(self, images, ctf_params, n, t_start)

    # -- checkpoints: see :mod:`cryoframe.algorithms.abinitio.checkpoint` ---------------------------
    def _params(self) -> dict[str, Any]:
        return ckpt.params(self)

    def _save_checkpoint(self, t: int) -> None:
        ckpt.save(self, t)

    def _load_checkpoint(self) -> int:
        return ckpt.load(self)


def to_np(a: Any) -> np.ndarray:
    from cryoframe.backend import to_host

    return to_host(a)

