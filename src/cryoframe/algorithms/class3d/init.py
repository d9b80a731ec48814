"""Initial class volumes of 3D classification (cryoSPARC's initialisation modes).

* ``simple``: K random disjoint subsets of the particles (``per_class`` each) reconstructed at their
  fixed poses.
* ``pca``: ``M`` random disjoint subsets reconstructed, their maps (within the focus mask, or the
  solvent mask) projected onto their first principal components, k-means into K clusters; a class
  starts as the reconstruction of the union of its cluster's subsets (the clusters' sums added, no
  second pass over the data).  Random subsets differ in their mixture of states, so the leading
  components point along the differences between states and the clusters start the classes apart.

``class_similarity`` (0..1) then pulls every start towards the consensus:
``V_k <- s V_bar + (1 - s) V_k`` before O-EM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["initial_volumes", "random_subsets"]


def random_subsets(n: int, m: int, per_subset: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``m`` disjoint random subsets of ``0 .. n-1`` of ``per_subset`` particles each (fewer when
    ``n < m * per_subset``): sorted indices (s,) and one-hot weights (s, m) float32."""
    per = max(1, min(per_subset, n // m))
    pick = rng.permutation(n)[: per * m]
    lab = np.repeat(np.arange(m), per)
    order = np.argsort(pick)
    idx, lab = pick[order], lab[order]
    w = np.zeros((len(idx), m), dtype=np.float32)
    w[np.arange(len(idx)), lab] = 1.0
    return idx, w


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    """Labels (m,) of k-means++ with ``k`` clusters of the rows of ``x``; every cluster non-empty."""
    m = len(x)
    cent = [x[rng.integers(m)]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in cent], axis=0)
        cent.append(x[rng.choice(m, p=d / d.sum()) if d.sum() > 0 else rng.integers(m)])
    c = np.array(cent)
    lab = np.zeros(m, dtype=int)
    for _ in range(iters):
        d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        new = d.argmin(1)
        for j in range(k):  # an empty cluster takes the point farthest from its centre
            if not np.any(new == j):
                far = np.argmax(d[np.arange(m), new])
                new[far] = j
        if np.array_equal(new, lab):
            break
        lab = new
        c = np.array([x[lab == j].mean(0) for j in range(k)])
    return lab


def initial_volumes(mode: str, k: int, n: int, per_class: int, rng: np.random.Generator,
                    insert: Callable[[np.ndarray, np.ndarray], np.ndarray],
                    maps: Callable[[np.ndarray], np.ndarray], mask: np.ndarray | None,
                    n_subsets: int | None = None) -> dict[str, Any]:
    """Initial class maps (k, b, b, b).

    ``insert(idx, weights)`` returns the per-class half sums of the particles ``idx`` with one-hot
    ``weights``; ``maps(sums)`` turns such sums into maps.  Returns ``volumes`` and ``sums`` (the
    class sums the maps came from) and, for ``pca``, ``subset_labels`` (the cluster of every subset).
    """
    if mode == "simple":
        idx, w = random_subsets(n, k, per_class, rng)
        sums = insert(idx, w)
        return {"volumes": maps(sums), "sums": sums}
    if mode != "pca":
        raise ValueError(f"init must be simple or pca, not {mode!r}")
    m = n_subsets or max(k, min(4 * k, 64), 16)
    per = max(1, min(per_class, n // m))
    idx, w = random_subsets(n, m, per, rng)
    sub_sums = insert(idx, w)
    vols = maps(sub_sums)
    x = vols.reshape(m, -1) if mask is None else (vols * mask[None]).reshape(m, -1)
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    ncomp = max(1, min(k - 1, m - 1, 8))
    feats = u[:, :ncomp] * s[:ncomp]
    lab = _kmeans(feats, k, rng)
    sums = np.stack([sub_sums[lab == j].sum(0) for j in range(k)])
    return {"volumes": maps(sums), "sums": sums, "subset_labels": lab}
