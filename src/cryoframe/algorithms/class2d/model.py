"""Reference-free 2D classification (RELION-like regularised likelihood) as a scikit-learn estimator.

One iteration = one pass over the particle partitions (a dask graph, through
:func:`cryoframe.distributed.mapreduce.map_partitions`): each partition runs the E-step of
:mod:`.estep` (posterior over class x in-plane angle x translation; per class, the cross terms of
every angle and translation are one real matrix product over the Fourier components within the
E-step limit) and returns M-step sufficient statistics, which are tree-reduced; the driver then
runs the M-step of :mod:`.mstep` (class averages regularised by ``tau_fudge``, class priors, noise
spectra per group).  :mod:`.checkpoint` saves the state after every iteration.  Memory is bounded
by the partition size, not by the number of particles.
``algorithm="vdam"`` processes growing random minibatches and keeps running averages of the
statistics (stochastic EM, i.e. preconditioned gradient steps on the references).
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from cryoframe.algorithms.class2d import checkpoint as ck
from cryoframe.algorithms.class2d import estep as es
from cryoframe.algorithms.class2d import init as ini
from cryoframe.algorithms.class2d import mstep as ms
from cryoframe.algorithms.class2d.misfit import OUTLIER_MAX_MISFIT, OUTLIER_MIN_EVIDENCE, misfit_shell
from cryoframe.errors import InputError

__all__ = ["Class2D"]

_BUDGET = 256 << 20  # 256 MiB of E-step work arrays per partition (sets the automatic chunk size)
_FAN_IN = 8
_EDGE_PX = 5.0  # soft-mask edge width (RELION's default)
_SCALE_RANGE = (0.2, 5.0)  # allowed per-particle contrast scale (scale_mode particle/sample)
_SPLIT_MAX = 2000  # at most this many members of a class enter a split
_RESEED_UNTIL = 15  # no re-seeding after this iteration: the rest converge (a fixed count, so resumed runs match)
_OUTLIERS_FROM = 4  # the outlier class opens with the 5th iteration (classes have formed; a fixed count, so resumed runs match)


def _hard_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """Particles whose label is each of the K classes (K,) (unassigned -1 and the outlier class K left out)."""
    return np.bincount(labels[(labels >= 0) & (labels < k)], minlength=k)


def _normalised_scales(scale: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-particle scales divided by their class's mean (the A <-> a degeneracy fixed on the
    particle side), clipped to ``_SCALE_RANGE``."""
    ok = labels >= 0
    tot = np.bincount(labels[ok], weights=scale[ok], minlength=k)
    cnt = np.bincount(labels[ok], minlength=k)
    mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), 1.0)
    out = scale / np.where(ok, mean[np.maximum(labels, 0)], 1.0)
    return np.clip(out, *_SCALE_RANGE).astype(np.float32)


class Class2D(BaseEstimator):
    """Reference-free 2D classification of particle images (RELION 2D / EMAN2 e2refine2d-like).

    Parameters: ``n_classes``; ``n_iter``; ``tau_fudge`` (RELION's T); ``psi_step_deg`` (deg);
    ``offset_range_px``, ``offset_step_px`` (px; a disc of translations, any step >= 0.1 px);
    ``mask_diameter_A`` (Å, soft mask of the averages and, with ``zero_mask``, of the particles:
    zeros outside, RELION's --zero_mask; default 0.9 box); ``ctf_mode`` "full" | "flip" (phase
    flipping only, RELION's --only_flip_phases); ``psize_A``
    (Å/px; None: the store's, required for array input with ``ctf``); ``ctf``;
    ``limit_e_step_resolution_A`` (Å); ``center`` (re-centre averages on their centre of mass);
    ``algorithm`` "em" | "vdam"; ``init`` "random" | "msa"; ``nbasis`` (MSA components);
    ``random_state`` (int or None); ``device`` "cpu" | "gpu" | "auto"; ``batch_size`` (first vdam
    minibatch, default min(n, max(200, 20 K))); ``reseed_min_fraction`` (classes holding less than
    this fraction of n/K are re-seeded by splitting the largest class); ``reseed_similarity``
    (duplicate classes, correlation above it, are re-seeded too; None: off); re-seeding runs in
    iterations 2..``_RESEED_UNTIL`` (15) only (2..5 with ``outliers``; after that a class that
    duplicates one at least twice its size is closed instead), and a class counts as tiny by its hard
    membership (a class that holds soft weight but wins no particle is dead); ``scale_mode``
    (per-particle contrast scale in the likelihood): "sample" (default: a scale per class, angle
    and shift under a Gaussian prior N(1, ``scale_prior_sd``^2), bounded to [0.2, 5], with the
    marginal's Occam factor, see :func:`.estep.scale_score`; ``scale_prior_sd`` None: a free
    scale, which makes the score correlation-like so junk matches any class as well as a real
    view -- measured on junk-laden picks (bench/bench_class2d_junk.py) it spread the junk through
    the real classes), "none" (every particle at the class average's scale, as RELION with
    group-level --scale: junk gathers in flat, low-power classes, but particles of low contrast
    (0.5-0.6 of the mean) then fit their own class no better than a flat one and drift) |
    "particle" (one scale per particle, re-estimated from its best sample after every iteration,
    normalised to mean 1 per class, fixed during the next E-step); ``refine_poses``
    (in the last iteration and ``predict``, the reported angle and shift of every particle are
    refined locally around its best sample at 1/4 then 1/8 of the coarse steps, as RELION's adaptive
    oversampling of significant poses; the statistics are unchanged); ``outliers`` (from the 5th
    iteration on, and in ``predict``: a particle that fits no class --
    evidence over an empty pick below 3 nats, or low-resolution misfit to its class at its best pose
    above 2, :mod:`.misfit` -- is labelled ``n_classes`` (the outlier class) and leaves the class
    averages, priors and noise spectra: empty picks, edges and debris that resemble a view no
    longer sit in, and blur, the real classes); ``chunk_size`` (particles per partition; None:
    from the ``_BUDGET`` of E-step work arrays per partition); ``checkpoint_dir`` (state after every
    iteration); ``warm_start`` (scikit-learn convention: ``fit`` continues from the last completed
    iteration in ``checkpoint_dir``, else from this estimator's previous ``fit``, up to ``n_iter``
    iterations in total; data and every parameter except ``n_iter``, ``device``, ``chunk_size`` and
    ``checkpoint_dir`` must be those of the run it continues).

    Learned: ``class_averages_`` (K, b, b) real space, ``class_sizes_`` (hard counts; outliers, label
    K, are not in them: ``n_outliers_``),
    ``class_priors_``, ``labels_``, ``posterior_max_`` (max over all samples), ``psi_deg_`` (deg),
    ``shifts_px_`` (n, 2) (x, y) px (centring shifts, see below), ``scales_``, ``ess_`` (1/sum p^2 over samples),
    ``log_likelihood_`` (per particle), ``gain_`` (per particle: log-likelihood of the
    model minus that of a noise-only image, i.e. the evidence for a particle over an empty pick),
    ``misfit_`` (per particle, from the final pass: standardised excess of the low-resolution residual
    over noise at the best sample, :mod:`.misfit`; debris that joined a real class leaves a residual), ``group_noise_spectra_`` (G, shells) per noise group and
    ``noise_spectrum_`` their mean (per shell, unnormalised-FFT units of
    the masked images), ``resolution_A_`` (Å, last shell with SSNR > 1), ``history_``, ``n_iter_``.
    Pose convention: particle ``I(p) = A(R(psi) (p + s))`` with ``s = shifts_px_``: the shift is the
    translation that centres the particle (cryoSPARC's ``alignments2D/shift``, RELION's
    rlnOriginX/Y in px); the particle's centre is at ``box // 2 - s``.
    """

    def __init__(self, n_classes: int = 50, n_iter: int = 25, tau_fudge: float = 2.0,
                 psi_step_deg: float = 6.0, offset_range_px: float = 5, offset_step_px: float = 1,
                 mask_diameter_A: float | None = None, psize_A: float | None = None, ctf: bool = True,
                 ctf_mode: str = "full", zero_mask: bool = True,
                 limit_e_step_resolution_A: float | None = None, center: bool = True, algorithm: str = "em",
                 init: str = "random", nbasis: int = 10, random_state: int | None = 0, device: str = "cpu",
                 batch_size: int | None = None, reseed_min_fraction: float = 0.05,
                 reseed_similarity: float | None = 0.95,
                 scale_mode: str = "sample", scale_prior_sd: float | None = 0.3, refine_poses: bool = True,
                 outliers: bool = True, chunk_size: int | None = None,
                 checkpoint_dir: str | os.PathLike[str] | None = None, warm_start: bool = False) -> None:
        self.n_classes = n_classes
        self.n_iter = n_iter
        self.tau_fudge = tau_fudge
        self.psi_step_deg = psi_step_deg
        self.offset_range_px = offset_range_px
        self.offset_step_px = offset_step_px
        self.mask_diameter_A = mask_diameter_A
        self.psize_A = psize_A
        self.ctf = ctf
        self.ctf_mode = ctf_mode
        self.zero_mask = zero_mask
        self.limit_e_step_resolution_A = limit_e_step_resolution_A
        self.center = center
        self.algorithm = algorithm
        self.init = init
        self.nbasis = nbasis
        self.random_state = random_state
        self.device = device
        self.batch_size = batch_size
        self.reseed_min_fraction = reseed_min_fraction
        self.reseed_similarity = reseed_similarity
        self.scale_mode = scale_mode
        self.scale_prior_sd = scale_prior_sd
        self.refine_poses = refine_poses
        self.outliers = outliers
        self.chunk_size = chunk_size
        self.checkpoint_dir = checkpoint_dir
        self.warm_start = warm_start

    # -- inputs and geometry -------------------------------------------------------------------
    def _data(self, X: Any, ctf_params: dict[str, Any] | None,
              fitted_psize: float | None = None) -> tuple[Any, dict[str, np.ndarray] | None, float]:
        import dask.array as da

        from cryoframe.storage.ctf import CTF_KEYS, OPTIONAL_CTF_KEYS, read_ctf_params
        from cryoframe.storage.store import ParticleStore

        psize = self.psize_A if self.psize_A is not None else fitted_psize
        if isinstance(X, ParticleStore):
            if psize is None:
                psize = X.psize_A
            if self.ctf and ctf_params is None:
                ctf_params = read_ctf_params(X, hint="or pass ctf=False")
            X = X.images()
        else:
            if self.ctf and psize is None:
                raise InputError("psize_A (Å/px) is needed to compute the CTF of images given as an array")
            if not isinstance(X, da.Array):
                X = da.from_array(np.asarray(X, dtype=np.float32), chunks=(-1, -1, -1))
        if X.ndim != 3 or X.shape[1] != X.shape[2] or X.shape[0] < 1:
            raise InputError(f"images must have shape (n, box, box), got {X.shape}")
        n = X.shape[0]
        ctf = None
        if self.ctf:
            if ctf_params is None:
                raise InputError("ctf=True needs ctf_params (per-particle df1_A, df2_A, df_angle_rad, "
                                 "accel_kv, cs_mm, amp_contrast) or a ParticleStore with ctf/ fields; "
                                 "or pass ctf=False")
            ctf = {}
            for k in (*CTF_KEYS, *OPTIONAL_CTF_KEYS):
                v = ctf_params.get(k, ctf_params.get(f"ctf/{k}"))
                if v is None and k in OPTIONAL_CTF_KEYS:
                    continue
                if v is None:
                    raise InputError(f"ctf_params lacks {k!r}")
                try:
                    ctf[k] = np.broadcast_to(np.asarray(v, dtype=np.float64), (n,))
                except ValueError as exc:
                    raise InputError(f"ctf_params[{k!r}]: need a scalar or one value per image") from exc
            if self.ctf_mode == "flip":
                ctf["flip_phases"] = np.ones(n)
        return X, ctf, float(psize if psize is not None else 1.0)

    def _setup(self, n: int, box: int, psize: float) -> dict[str, Any]:
        k = int(self.n_classes)
        if k < 1 or k > n:
            raise InputError(f"n_classes must be in 1..number of particles ({n}), got {self.n_classes}")
        if self.algorithm not in ("em", "vdam"):
            raise InputError(f"algorithm must be 'em' or 'vdam', got {self.algorithm!r}")
        if self.ctf_mode not in ("full", "flip"):
            raise InputError(f"ctf_mode must be 'full' or 'flip' (phase flipping only), got {self.ctf_mode!r}")
        if self.scale_mode not in ("none", "particle", "sample"):
            raise InputError(f"scale_mode must be 'none', 'particle' or 'sample', got {self.scale_mode!r}")
        if self.init not in ("random", "msa"):
            raise InputError(f"init must be 'random' or 'msa', got {self.init!r}")
        if not (self.tau_fudge > 0 and 0 < self.psi_step_deg <= 360 and self.n_iter >= 1 and psize > 0):
            raise InputError("need tau_fudge > 0, 0 < psi_step_deg <= 360, n_iter >= 1 and psize_A > 0")
        diam = 0.9 * box * psize if self.mask_diameter_A is None else float(self.mask_diameter_A)
        if not 0 < diam <= box * psize:
            raise InputError(f"mask_diameter_A={diam:g} Å must be > 0 and fit the box ({box * psize:g} Å)")
        step, rng_px = float(self.offset_step_px), float(self.offset_range_px)
        if not step >= 0.1:
            raise InputError(f"offset_step_px must be at least 0.1 px, got {self.offset_step_px}")
        if not 0 <= rng_px < box / 2 - 1:
            raise InputError(f"offset_range_px must be in [0, box/2 - 1 = {box / 2 - 1:g}), got {rng_px:g}")
        g = np.arange(-math.floor(rng_px / step), math.floor(rng_px / step) + 1) * step
        gx, gy = np.meshgrid(g, g)
        keep = gx**2 + gy**2 <= rng_px**2 + 1e-9
        e_shell = box // 2 - 1
        if self.limit_e_step_resolution_A is not None and self.limit_e_step_resolution_A > 0:
            e_shell = min(e_shell, int(box * psize / float(self.limit_e_step_resolution_A)))
            if e_shell < 1:
                raise InputError(f"limit_e_step_resolution_A={self.limit_e_step_resolution_A} Å is coarser "
                                 "than the box")
        nr = max(1, int(round(360.0 / float(self.psi_step_deg))))
        psi = np.arange(nr) * (360.0 / nr)
        ns = int(keep.sum())
        nf = int((es.shell_map(box) <= min(e_shell + 2, box // 2)).sum())
        per = 12 * k * nr * ns + 64 * nf  # bytes per particle: sample arrays + spectra
        fixed = 2 * (2 * nf * nr * ns * 4)  # per partition: one class's B matrix and shifted sums
        chunk = int(self.chunk_size) if self.chunk_size else int(np.clip((_BUDGET - fixed) // per, 32, 4096))
        return {"K": k, "box": box, "psize_A": psize, "psi_deg": psi, "offsets": np.c_[gx[keep], gy[keep]],
                "e_max": e_shell, "chunk": chunk,
                "mask": es.soft_mask(box, diam / (2 * psize), _EDGE_PX)}

    def _model(self, st: dict[str, Any], geo: dict[str, Any], final: bool = True,
               outliers: bool | None = None) -> dict[str, Any]:
        """The E-step's model; ``outliers`` (None: ``final``) opens the outlier class."""
        outliers = bool(self.outliers) and (final if outliers is None else outliers)
        with np.errstate(divide="ignore"):
            lp = np.log(st["priors"])
        return {"refs": st["refs"], "log_prior": lp, "sigma2": st["sigma2"], "psi_deg": geo["psi_deg"],
                "offsets": geo["offsets"], "e_shell": ms.e_shell(st, geo),
                "mask": geo["mask"] if self.zero_mask else np.ones_like(geo["mask"]),
                "scale_range": None if self.scale_mode == "none" else _SCALE_RANGE,
                "scale_mode": self.scale_mode,
                "scale_prec": 0.0 if not self.scale_prior_sd else 1.0 / float(self.scale_prior_sd) ** 2, "refine_poses": bool(self.refine_poses) and final,
                "psi_step_deg": float(geo["psi_deg"][1] - geo["psi_deg"][0]) if len(geo["psi_deg"]) > 1 else 360.0,
                "offset_step_px": float(self.offset_step_px),
                # the final pass (and the outlier class) measure each particle's low-resolution misfit (.misfit)
                "misfit_shell": misfit_shell(geo["box"], geo["psize_A"], ms.e_shell(st, geo)) if final or outliers else 0,
                "outliers": {"min_evidence": OUTLIER_MIN_EVIDENCE, "max_misfit": OUTLIER_MAX_MISFIT} if outliers else None,
                "psize_A": geo["psize_A"]}

    def _map(self, fn: Any, X: Any, ctf: dict[str, np.ndarray] | None, chunk: int, *args: Any,
             per_rows: list[np.ndarray] | None = None, reduce: bool = True) -> Any:
        """Map ``fn(block, ctf_rows, *row_slices, *args)`` over ``chunk``-row partitions of X; tree-
        ``combine`` the results (``reduce``) or return their list."""
        from cryoframe.distributed.mapreduce import map_partitions

        return map_partitions(fn, X, *args, per_rows=[ctf, *(per_rows or [])], chunk=chunk,
                              reduce=es.combine if reduce else None, fan_in=_FAN_IN)

    # -- M-step ----------------------------------------------------------------------------------
    def _mstep(self, st: dict[str, Any], stats: dict[str, np.ndarray], n: float, geo: dict[str, Any]) -> None:
        # per-particle scales are normalised to mean 1 per class on the particle side (see fit)
        ms.m_step(st, stats, n, geo, tau_fudge=self.tau_fudge,
                  scale_correction=self.scale_mode == "sample", center=self.center)

    def _params_json(self) -> str:
        return ck.params_json(self.get_params())

    # -- initialisation ----------------------------------------------------------------------------
    def _initial(self, X: Any, ctf: dict[str, np.ndarray] | None, geo: dict[str, Any],
                 rng: np.random.Generator) -> dict[str, Any]:
        n, box, k = X.shape[0], geo["box"], geo["K"]
        if self.init == "msa":
            ns = min(n, ini.MSA_SAMPLE)
            idx = np.sort(rng.choice(n, ns, replace=False)) if ns < n else np.arange(n)
            sub_ctf = None if ctf is None else {c: v[idx] for c, v in ctf.items()}
            max_shell = min(box // 2 - 1, geo["e_max"])
            feats = self._map(ini.msa_task, X[idx] if ns < n else X, sub_ctf, geo["chunk"], geo["mask"],
                              geo["psize_A"], max_shell, self.device, reduce=False)
            groups = np.full(n, -1, dtype=np.int64)
            groups[idx] = ini.msa_groups(np.concatenate(feats), k, int(self.nbasis), self._seed(),
                                         ini.INIT_SUBSET)
        else:
            groups = np.full(n, -1, dtype=np.int64)
            pick = rng.choice(n, k * max(1, min(ini.INIT_SUBSET, n // k)), replace=False)
            groups[pick] = np.arange(len(pick)) % k
        parts = self._map(ini.init_task, X, ctf, geo["chunk"], k, geo["mask"], geo["psize_A"], self.device,
                          per_rows=[groups], reduce=False)
        tot = {key: sum(p[key] for p in parts) for key in parts[0]}
        a = ini.wiener_init(tot["num"], tot["den"], tot["count"], ctf is not None)
        a = np.where(es.shell_map(box) <= box // 2 - 1, a, 0)
        refs = (es.icfft2(np, a, box) * geo["mask"]).astype(np.float32)
        mean = tot["sum"] / n
        var = tot["pow"] / n - (mean.real**2 + mean.imag**2)  # per-frequency variance over particles
        sigma2 = np.maximum(es.shell_average(var, box) / 2.0, 1e-30)
        cnt = np.maximum(tot["count"], 1.0)
        return {"refs": refs, "priors": cnt / cnt.sum(), "sigma2": np.tile(sigma2, (geo["n_groups"], 1)),
                "tau2": ms.tau2(refs, box), "res_shell": np.zeros(k, dtype=np.int64),
                "e_data": np.asarray(box // 2 - 1), "wsum": tot["count"] * 1.0,
                "labels": np.full(n, -1, dtype=np.int32), "posterior_max": np.zeros(n, np.float32),
                "psi_deg": np.zeros(n, np.float32), "shift": np.zeros((n, 2), np.float32),
                "ess": np.zeros(n, np.float32), "scale": np.ones(n, np.float32), "loglik": np.full(n, np.nan),
                "gain": np.full(n, np.nan, np.float32), "misfit": np.full(n, np.nan, np.float32),
                "run": None, "history": [], "iteration": 0}

    def _seed(self) -> int | None:
        return None if self.random_state is None else int(self.random_state)

    def _reseed(self, X: Any, ctf: dict[str, np.ndarray] | None, st: dict[str, Any],
                geo: dict[str, Any]) -> list[int]:
        """Re-seed tiny and duplicate classes by splitting the currently largest class in two (see
        init.split_class): its members are aligned, PCA + 2-means splits them, the worse-fitting side
        seeds the class.  Duplicates (the smaller of two classes whose averages correlate above
        ``reseed_similarity`` after rotation) count only while the largest class holds > 1.5 n/K."""
        n, k, box = X.shape[0], geo["K"], geo["box"]
        lab0 = st["labels"]
        hard = _hard_counts(lab0, k)  # a class nobody joins is dead even with soft weight
        small = [int(c) for c in np.nonzero(np.minimum(st["wsum"], hard) < float(self.reseed_min_fraction) * n / k)[0]]
        if self.reseed_similarity is not None and k > 1 and st["wsum"].max() > 1.5 * n / k:
            for i, j in self._duplicate_pairs(st, geo):
                if i not in small and j not in small:
                    small.append(i if st["wsum"][i] < st["wsum"][j] else j)
        if len(small) == 0 or len(small) >= k:
            return []
        done = []
        lab = st["labels"].copy()
        rec = es.shell_map(box) <= box // 2 - 1
        for cls in small:
            big = int(np.argmax(st["wsum"]))
            members = np.nonzero((lab == big) & np.isfinite(st["loglik"]))[0]
            if len(members) < 8:
                break
            members = members[:: -(-len(members) // _SPLIT_MAX)]
            cm = None if ctf is None else {c: v[members] for c, v in ctf.items()}
            imgs = np.asarray(X[members].compute(), dtype=np.float32)
            side, avg = ini.split_class(imgs, cm, st["psi_deg"][members], st["shift"][members], geo["mask"],
                                        geo["psize_A"], int(self.nbasis), self._seed())
            worse = int(np.argmin([st["loglik"][members][side == j].mean() for j in (0, 1)]))
            frac = float(np.mean(side == worse))
            refs = ms.finish_refs(np.where(rec, avg, 0), geo, self.center)
            st["refs"][cls], st["refs"][big] = refs[worse], refs[1 - worse]
            tot = st["priors"][big]
            st["priors"][cls], st["priors"][big] = tot * frac, tot * (1 - frac)
            st["tau2"][[cls, big]] = ms.tau2(st["refs"][[cls, big]], box)
            wb = st["wsum"][big]
            st["wsum"][cls], st["wsum"][big] = wb * frac, wb * (1 - frac)
            lab[members[side == worse]] = cls
            if st["run"] is not None:
                for key in ("num", "den"):
                    st["run"][key][[cls, big]] = 0
            done.append(int(cls))
        st["priors"] = st["priors"] / st["priors"].sum()
        return done

    def _duplicate_pairs(self, st: dict[str, Any], geo: dict[str, Any]) -> list[tuple[int, int]]:
        """Class pairs (i < j) whose averages correlate above ``reseed_similarity`` after rotation
        (:func:`.init.similar_pairs` at low resolution), most similar first."""
        if self.reseed_similarity is None:
            return []
        k, box = geo["K"], geo["box"]
        sim = ini.similar_pairs(st["refs"], min(ms.e_shell(st, geo), box // 4))
        pairs = []
        for flat in np.argsort(-np.triu(sim, 1), axis=None, kind="stable"):
            i, j = divmod(int(flat), k)
            if j <= i or sim[i, j] <= float(self.reseed_similarity):
                break
            pairs.append((i, j))
        return pairs

    def _merge_small_duplicates(self, st: dict[str, Any], geo: dict[str, Any]) -> list[int]:
        """With the outlier class open (no more re-seeding): a class whose average duplicates a class
        at least twice its size (correlation above ``reseed_similarity`` after rotation) is closed
        (prior 0; its members join the twin in the next E-step).  Such a class is the small half of
        a view split early on, and the leftover junk of that view gathers in it."""
        if self.reseed_similarity is None:
            return []
        hard = _hard_counts(st["labels"], geo["K"])
        closed: list[int] = []
        for i, j in self._duplicate_pairs(st, geo):
            small, big = (i, j) if hard[i] < hard[j] else (j, i)
            if small in closed or big in closed or hard[small] == 0 or 2 * hard[small] > hard[big]:
                continue
            closed.append(int(small))
        if closed:
            st["priors"][closed] = 0.0
            st["priors"] = st["priors"] / st["priors"].sum()
        return closed

    def _batch_size(self, t: int, n: int, k: int) -> int:
        if self.algorithm == "em":
            return n
        b0 = min(n, int(self.batch_size) if self.batch_size else max(200, 20 * k))
        ramp = self.n_iter - max(1, self.n_iter // 5)
        if t >= ramp:
            return n
        return int(min(n, round(b0 * (n / b0) ** (t / ramp))))

    # -- public API ---------------------------------------------------------------------------------
    def fit(self, X: Any, ctf_params: dict[str, Any] | None = None, groups: Any = None) -> Class2D:
        """Classify ``X``: a ParticleStore, a dask array or an array (n, box, box) of images.

        ``ctf_params``: per-particle arrays (or scalars) ``df1_A``, ``df2_A`` (Å), ``df_angle_rad``,
        ``accel_kv`` (kV), ``cs_mm`` (mm), ``amp_contrast`` (optionally ``phase_shift_rad``; keys may
        carry the ``ctf/`` prefix); read from the store when X is one (:func:`read_ctf_params`).
        With ``warm_start``, continues the previous run (see the class docstring).
        ``groups``: per-particle noise-group labels (any values, e.g. micrograph ids or RELION's
        rlnGroupNumber); each group gets its own noise power spectrum.  None: one group.
        """
        from cryoframe.backend import get_array_module

        Xd, ctf, psize = self._data(X, ctf_params)
        n, box = int(Xd.shape[0]), int(Xd.shape[1])
        geo = self._setup(n, box, psize)
        if groups is None:
            gidx = np.zeros(n, dtype=np.int64)
        else:
            g = np.asarray(groups)
            if g.shape != (n,):
                raise InputError(f"groups must hold one label per particle ({n}), got shape {g.shape}")
            gidx = np.unique(g, return_inverse=True)[1].astype(np.int64).reshape(n)
        geo["n_groups"] = int(gidx.max()) + 1
        get_array_module(self.device)  # fail early on a missing GPU
        rng = np.random.default_rng(self.random_state)
        st = None
        if self.checkpoint_dir is not None:
            d = Path(self.checkpoint_dir)
            d.mkdir(parents=True, exist_ok=True)
            if self.warm_start:
                loaded = ck.load(Path(self.checkpoint_dir), n, box, geo["n_groups"], self._params_json())
                if loaded is not None:
                    st, rng.bit_generator.state = loaded
            else:
                for f in d.glob("class2d_it*.npz"):
                    f.unlink()
        prev = getattr(self, "_last", None)
        if st is None and self.warm_start and prev is not None:
            if prev["key"] != (n, box, geo["n_groups"], self._params_json()):
                raise InputError("warm_start: the previous fit was on other data or parameters; cannot continue")
            st = {k: (v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v)) for k, v in prev["st"].items()}
            rng.bit_generator.state = prev["rng"]
        if st is None:
            st = self._initial(Xd, ctf, geo, rng)
        for t in range(int(st["iteration"]), int(self.n_iter)):
            t0 = time.perf_counter()
            # with the outlier class open, classes that held junk empty out: splitting views to refill them
            # only makes small mixed classes, so re-seeding stops there
            until = min(_RESEED_UNTIL, _OUTLIERS_FROM + 1) if self.outliers else _RESEED_UNTIL
            reseeded = self._reseed(Xd, ctf, st, geo) if 0 < t < until else []
            merged = self._merge_small_duplicates(st, geo) if self.outliers and t > _OUTLIERS_FROM else []
            b = self._batch_size(t, n, geo["K"])
            rows: Any = slice(None)
            xb, cb, gb = Xd, ctf, gidx
            if b < n:
                rows = np.sort(rng.choice(n, b, replace=False))
                xb, cb, gb = Xd[rows], None if ctf is None else {c: v[rows] for c, v in ctf.items()}, gidx[rows]
            final = t == int(self.n_iter) - 1  # poses refined in the last pass
            model_t = self._model(st, geo, final=final, outliers=t >= _OUTLIERS_FROM)
            res = self._map(es.estep_task, xb, cb, geo["chunk"], model_t, self.device, True,
                            per_rows=[gb, st["scale"][rows]])
            stats, part = res["stats"], res["particles"]
            prev = st["labels"][rows]
            seen = prev >= 0
            changes = float(np.mean(prev[seen] != part["label"][seen])) if seen.any() else 1.0
            for key in ck.PARTICLE_KEYS:
                st[key][rows] = part["label" if key == "labels" else key]
            if self.scale_mode == "particle":
                st["scale"] = _normalised_scales(st["scale"], st["labels"], geo["K"])
            if self.algorithm == "vdam":
                eta = 1.0 if (t == 0 or b == n or st["run"] is None) else max(b / n, 1.0 / (t + 1))
                new = {key: stats[key] * (n / b) for key in ("num", "den", "wsum", "asum", "noise", "count")}
                old = st["run"]
                st["run"] = new if eta >= 1 else {key: (1 - eta) * old[key] + eta * new[key] for key in new}
                self._mstep(st, st["run"], n, geo)
            else:
                self._mstep(st, stats, n, geo)
            st["iteration"] = t + 1
            st["history"].append({"iteration": t + 1, "log_likelihood": float(stats["loglik"]),
                                  "n_particles": b, "class_changes": changes, "reseeded": reseeded,
                                  "merged": merged,
                                  "e_step_shell": int(st["e_data"]),
                                  "e_step_resolution_A": box * psize / max(int(st["e_data"]), 1),
                                  "resolution_A": box * psize / max(int(np.max(st["res_shell"])), 1),
                                  "seconds": time.perf_counter() - t0})
            if self.checkpoint_dir is not None:
                ck.save(Path(self.checkpoint_dir), st, rng, n, box, self._params_json())
        self._set_attrs(st, geo)
        self._last = {"key": (n, box, geo["n_groups"], self._params_json()), "st": st,
                      "rng": rng.bit_generator.state}
        return self

    def _set_attrs(self, st: dict[str, Any], geo: dict[str, Any]) -> None:
        box, k = geo["box"], geo["K"]
        self.class_averages_ = np.asarray(st["refs"], dtype=np.float32)
        self.class_priors_ = np.asarray(st["priors"], dtype=np.float64)
        self.labels_ = np.asarray(st["labels"]).astype(np.int64)
        counts = np.bincount(self.labels_[self.labels_ >= 0], minlength=k + 1)
        self.class_sizes_, self.n_outliers_ = counts[:k], int(counts[k])
        self.posterior_max_ = np.asarray(st["posterior_max"])
        self.psi_deg_ = np.asarray(st["psi_deg"])
        self.shifts_px_ = -np.asarray(st["shift"])  # internal: centre displacement; public: the centring shift
        self.ess_ = np.asarray(st["ess"])
        self.scales_ = np.asarray(st["scale"])
        self.log_likelihood_ = np.asarray(st["loglik"])
        self.gain_ = np.asarray(st["gain"])
        self.misfit_ = np.asarray(st["misfit"])
        self.group_noise_spectra_ = np.atleast_2d(np.asarray(st["sigma2"]))
        self.noise_spectrum_ = self.group_noise_spectra_.mean(0)
        self._e_last = int(st.get("e_data", box // 2 - 1))
        res = np.asarray(st["res_shell"])
        with np.errstate(divide="ignore"):
            self.resolution_A_ = np.where(res > 0, box * geo["psize_A"] / np.maximum(res, 1), np.inf)
        self.history_ = list(st["history"])
        self.n_iter_ = int(st["iteration"])
        self.psize_A_ = geo["psize_A"]
        self._geo = geo

    def predict(self, X: Any, ctf_params: dict[str, Any] | None = None) -> np.ndarray:
        """Most probable class (n,) of each image under the fitted model (one E-step pass); with
        ``outliers``, ``n_classes`` for images that fit no class."""
        check_is_fitted(self, "class_averages_")
        Xd, ctf, _ = self._data(X, ctf_params, self.psize_A_)
        geo = self._geo
        if Xd.shape[1] != geo["box"]:
            raise InputError(f"images are {Xd.shape[1]} px; the model was fitted on {geo['box']} px")
        st = {"refs": self.class_averages_, "priors": self.class_priors_, "sigma2": self.noise_spectrum_,
              "res_shell": np.asarray([self._e_last - ms.E_MARGIN])}
        res = self._map(es.estep_task, Xd, ctf, geo["chunk"], self._model(st, geo), self.device, False,
                        per_rows=[np.zeros(Xd.shape[0], dtype=np.int64), np.ones(Xd.shape[0], np.float32)])
        return res["particles"]["label"].astype(np.int64)
