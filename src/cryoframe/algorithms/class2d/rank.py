"""Class ranking for automatic 2D class selection (``select2d --auto``), in the spirit of RELION 4's
class ranker: per-class features measured on the class averages and the assignments, combined into
one 0-1 score; classes scoring at least a threshold are kept.

Features (each mapped to 0-1, 1 = looks like a real particle view):

- ``contrast``: RMS of the class average inside the particle mask relative to the strongest class
  (empty picks average to a flat, low-power image).
- ``compactness``: fraction of the average's squared contrast (after removing its mean inside the
  mask) that lies within ``COMPACT_RADIUS`` of the mask radius around the centre; ice/carbon edges
  and off-centre debris spread their power out to the mask edge.  Mapped linearly from
  ``COMPACT_RANGE`` to 0-1.
- ``resolution``: the class's resolution (last shell with SSNR > 1) as a fraction of the best
  class's spatial frequency, mapped linearly from ``RESOLUTION_RANGE`` to 0-1 (one-off debris
  averages blur out to about half the best class's frequency).
- ``confidence``: 1 / mean ESS of the members' posteriors relative to the median class, capped
  at 1 (junk spreads its posteriors over many classes and poses).
- ``size``: class size relative to the median of non-empty classes, capped at 1.

Score = weighted geometric mean of the features with :data:`WEIGHTS` (a class must look right on
every axis: one near-zero feature sinks it); empty classes score 0.  :data:`DEFAULT_THRESHOLD` (0.6)
and the size weight (1: one-off debris gathers in small, compact classes that look right otherwise) were
chosen on bench/bench_class2d_junk.py seeds 0-2 (8 views + 25% junk: empty picks, debris, edges) and
checked on seeds 3-4, which took no part in the choice.

Per particle, ``select2d --auto`` also drops particles whose evidence (``alignments2D/evidence``:
log-likelihood under the class model minus that of a noise-only image, in nats) is below
:data:`DEFAULT_MIN_EVIDENCE`: an empty pick or an ice edge that landed in a good class fits it no
better than noise does (on the junk bench: empty picks -2, edges ~0, real particles above 3.5 for
99% of them), whatever its class's score; and particles whose low-resolution misfit to their class
(``alignments2D/misfit``, :mod:`.misfit`: about N(0, 1) when the particle fits) is above
:data:`DEFAULT_MAX_MISFIT`: debris that joined a real class leaves its own blobs in the residual
(on the junk bench, seeds 0-4: real particles -1 +- 1, 1-2% of them above 2; debris in real classes
60% above 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoframe.algorithms.class2d.misfit import OUTLIER_MAX_MISFIT, OUTLIER_MIN_EVIDENCE

__all__ = ["COMPACT_RADIUS", "DEFAULT_MAX_MISFIT", "DEFAULT_MIN_EVIDENCE", "DEFAULT_THRESHOLD", "FEATURES", "WEIGHTS", "class_features", "class_scores"]

COMPACT_RADIUS = 0.6
COMPACT_RANGE = (0.55, 0.85)
RESOLUTION_RANGE = (0.45, 0.85)
WEIGHTS: dict[str, float] = {"contrast": 1.0, "compactness": 1.0, "resolution": 1.0, "confidence": 0.5, "size": 1.0}
FEATURES = tuple(WEIGHTS)
DEFAULT_THRESHOLD = 0.6
DEFAULT_MIN_EVIDENCE = OUTLIER_MIN_EVIDENCE  # nats
DEFAULT_MAX_MISFIT = OUTLIER_MAX_MISFIT  # standard deviations of the noise-only residual


def class_features(averages: np.ndarray, counts: np.ndarray, resolution_A: np.ndarray, mean_ess: np.ndarray,
                   psize_A: float, mask_radius_px: float) -> dict[str, np.ndarray]:
    """The 0-1 features of every class (see the module docstring): ``averages`` (K, b, b) real space,
    ``counts`` (K,), ``resolution_A`` (K,) Å (inf/nan: none), ``mean_ess`` (K,) (nan: empty),
    ``psize_A`` Å/px, ``mask_radius_px`` px."""
    avg = np.asarray(averages, dtype=np.float64)
    k, b = avg.shape[0], avg.shape[-1]
    g = np.arange(b) - b // 2
    r = np.hypot(g[None, :], g[:, None])
    inside = r <= mask_radius_px
    core = r <= COMPACT_RADIUS * mask_radius_px
    x = avg[:, inside]
    x = x - x.mean(1, keepdims=True)
    power = (x**2).mean(1)
    rms = np.sqrt(power)
    contrast = rms / rms.max() if rms.max() > 0 else np.zeros(k)
    e2 = (avg - avg[:, inside].mean(1)[:, None, None]) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(power > 0, e2[:, core].sum(1) / np.maximum(e2[:, inside].sum(1), 1e-300), 0.0)
    lo, hi = COMPACT_RANGE
    compact = np.clip((frac - lo) / (hi - lo), 0.0, 1.0)
    res = np.asarray(resolution_A, dtype=float)
    freq = np.where(np.isfinite(res) & (res > 0), 1.0 / np.where(np.isfinite(res) & (res > 0), res, 1.0), 0.0)
    rel = freq / freq.max() if freq.max() > 0 else np.zeros(k)
    lo, hi = RESOLUTION_RANGE
    resolution = np.clip((rel - lo) / (hi - lo), 0.0, 1.0)
    ess = np.asarray(mean_ess, dtype=float)
    inv = np.where(np.isfinite(ess) & (ess > 0), 1.0 / np.where(np.isfinite(ess) & (ess > 0), ess, 1.0), 0.0)
    med_inv = np.median(inv[inv > 0]) if (inv > 0).any() else 1.0
    confidence = np.minimum(inv / med_inv, 1.0)
    cnt = np.asarray(counts, dtype=float)
    med = np.median(cnt[cnt > 0]) if (cnt > 0).any() else 1.0
    size = np.minimum(cnt / max(med, 1e-12), 1.0)
    return {"contrast": contrast, "compactness": compact, "resolution": resolution, "confidence": confidence,
            "size": size}


def class_scores(features: dict[str, np.ndarray]) -> np.ndarray:
    """Weighted geometric mean of the features (0-1 per class)."""
    wsum = sum(WEIGHTS.values())
    logs = sum(w * np.log(np.maximum(np.asarray(features[f], dtype=float), 1e-6)) for f, w in WEIGHTS.items())
    return np.exp(logs / wsum)


def rank_model(model: Any, counts: np.ndarray, psize_A: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features and scores of a fitted :class:`~cryoframe.algorithms.class2d.Class2D`."""
    from cryoframe.algorithms.class2d.estep import soft_mask

    k = model.class_averages_.shape[0]
    labels = np.asarray(model.labels_)
    ess = np.asarray(model.ess_, dtype=float)
    ok = (labels >= 0) & (labels < k)  # (label k: the outlier class)
    tot = np.bincount(labels[ok], weights=ess[ok], minlength=k)
    cnt = np.bincount(labels[ok], minlength=k)
    mean_ess = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
    geo = getattr(model, "_geo", None)
    b = model.class_averages_.shape[-1]
    mask = geo["mask"] if geo is not None else soft_mask(b, 0.45 * b)
    radius = float(np.sqrt(mask[mask >= 0.5].size / np.pi))  # radius of the mask's half-height disc
    feats = class_features(model.class_averages_, counts, np.asarray(model.resolution_A_, dtype=float), mean_ess,
                           psize_A, radius)
    scores = class_scores(feats)
    scores[np.asarray(counts) == 0] = 0.0
    return feats, scores
