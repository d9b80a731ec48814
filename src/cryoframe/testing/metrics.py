"""Accuracy of 2D alignments against synthetic ground truth (tests and benchmarks)."""

from __future__ import annotations

import numpy as np

__all__ = ["pose_recovery_errors"]


def pose_recovery_errors(labels: np.ndarray, psi_deg: np.ndarray, shift_px: np.ndarray,
                         truth: dict[str, np.ndarray]) -> tuple[float, float]:
    """Median in-plane angle error (deg) and shift error (px) of estimated 2D alignments.

    ``shift_px`` (n, 2) in the stored convention of ``alignments2D/shift`` (cryoSPARC's shift,
    RELION's rlnOriginX/Y: the translation that centres the particle, whose centre is therefore at
    ``-shift``); ``truth`` from :func:`cryoframe.testing.make_truth` (``pose`` rad, ``shift`` = true
    centre displacement ``t``, ``class``).  A class average is the true template in its own frame,
    rotated by phi and shifted by c, so within a class ``psi' = psi - phi`` and
    ``t' = t - R(-psi') c``; both are estimated (circular mean, median) and removed.  Only the
    particles of each estimated class's dominant true class count.
    """
    centre = -np.asarray(shift_px, dtype=np.float64)
    psi_deg = np.asarray(psi_deg, dtype=np.float64)
    tpsi = np.rad2deg(truth["pose"])
    ang, sh = [], []
    for k in np.unique(labels):
        m = labels == k
        m &= truth["class"] == np.bincount(truth["class"][m]).argmax()
        d = np.deg2rad(psi_deg[m] - tpsi[m])
        phi = np.angle(np.exp(1j * d).mean())
        ang.append(np.rad2deg(np.abs(np.angle(np.exp(1j * (d - phi))))))
        a = np.deg2rad(psi_deg[m])
        dt = truth["shift"][m] - centre[m]
        c = np.array([np.median(np.cos(a) * dt[:, 0] - np.sin(a) * dt[:, 1]),
                      np.median(np.sin(a) * dt[:, 0] + np.cos(a) * dt[:, 1])])
        back = np.c_[np.cos(a) * c[0] + np.sin(a) * c[1], -np.sin(a) * c[0] + np.cos(a) * c[1]]
        sh.append(np.hypot(*(dt - back).T))
    return float(np.median(np.concatenate(ang))), float(np.median(np.concatenate(sh)))
