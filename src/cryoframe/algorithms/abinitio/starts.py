"""Combining random starts of multi-class ab initio: the class maps that explain the particles best together."""

from __future__ import annotations

import numpy as np

__all__ = ["pick_classes"]


def pick_classes(ev: np.ndarray, k: int) -> list[int]:
    """Choose ``k`` columns of the log evidences ``ev`` (particles x candidate maps) that best explain
    the particles together: the objective is ``sum_i log sum_{j chosen} exp(ev_ij)`` (the mixture
    likelihood with equal class shares, so a map that only duplicates a chosen one gains little).
    Greedy forward choice, then single swaps while one raises the objective."""

    def total(cols: list[int]) -> float:
        return float(np.logaddexp.reduce(ev[:, cols], axis=1).sum())

    m = ev.shape[1]
    chosen: list[int] = []
    for _ in range(min(k, m)):
        rest = [j for j in range(m) if j not in chosen]
        chosen.append(rest[int(np.argmax([total(chosen + [j]) for j in rest]))])
    best = total(chosen)
    improved = True
    while improved:
        improved = False
        for a in range(len(chosen)):
            for j in range(m):
                if j in chosen:
                    continue
                trial = chosen[:a] + [j] + chosen[a + 1:]
                v = total(trial)
                if v > best + 1e-9:
                    chosen, best, improved = trial, v, True
    return chosen
