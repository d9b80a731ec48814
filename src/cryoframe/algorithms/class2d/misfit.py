"""Per-particle misfit: does a particle's low-resolution content fit its class at its pose?

The class likelihood cannot tell a faint real particle from a piece of debris that resembles the
class: at the best pose both give the same cross term and the same fitted contrast (measured on
junk-laden picks, ``bench/bench_class2d_junk.py``: evidence, ESS, posterior and scale of debris in
real classes and of the faint third of the real particles overlap completely).  What differs is the
residual: a real particle minus its scaled class average is noise, a piece of debris minus the class
it joined leaves its own blobs.  Debris power sits at low resolution, where noise has few degrees of
freedom, so the residual's excess power there is a sharp test.

For the best sample of each particle (class, refined in-plane angle and shift, contrast scale) the
residual ``r = X - a CTF A`` is compared with the noise model over the shells 1 .. ``band``:

    z = sum_f h (|r_f|^2 / (2 sigma2_f) - 1) / sqrt(sum_f h^2)

(``h`` the half-plane multiplicities; each Fourier component's real and imaginary parts have
variance ``sigma2`` under the noise model, so ``z`` is a standardised chi-square excess: about
N(0, 1) for a particle that fits).  Measured at SNR 0.03: real particles, bright or faint, z -1 +- 1;
debris in real classes median 2.9, 60% above 2.

At high SNR (0.5 and above, negative stain) small model errors -- a coarse angular step, a
reference that is not exact -- are many noise sigmas too, so the misfit is the smaller of ``z`` and
``FRACTION_SCALE`` (20) times the unexplained fraction ``u`` = residual excess / the particle's own
low-resolution excess power (at least one noise sigma): a misfit above 2 then needs both a
significant residual and one that is more than a tenth of the particle's low-resolution signal.
Debris leaves a third to a half of its signal unexplained (median u 0.3-0.5); real particles at
SNR 0.5 with a 15 deg angular step leave a few percent.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["FRACTION_SCALE", "MISFIT_RESOLUTION_A", "OUTLIER_MAX_MISFIT", "OUTLIER_MIN_EVIDENCE", "low_band_misfit", "misfit_shell"]

OUTLIER_MIN_EVIDENCE = 3.0
"""nats: a particle with less evidence over an empty pick fits no class better than noise (on the junk
bench empty picks are at -2, edges ~0, 99% of real particles above 3.5)."""
OUTLIER_MAX_MISFIT = 2.0
"""A particle whose low-resolution misfit to its class is above this (about N(0, 1) when it fits;
real particles -1 +- 1) does not fit it (debris in real classes: 60% above 2)."""

FRACTION_SCALE = 20.0
MISFIT_RESOLUTION_A = 30.0
"""The misfit sums the shells up to this resolution (at least 2 shells): the overall shape and mass
distribution of a particle, where debris differs and noise has few degrees of freedom."""


def misfit_shell(box: int, psize_A: float, e_shell: int) -> int:
    """Last shell of the misfit band: ``box * psize / MISFIT_RESOLUTION_A``, at least 2, at most ``e_shell``."""
    return int(max(1, min(int(e_shell), max(2, round(box * psize_A / MISFIT_RESOLUTION_A)))))


def low_band_misfit(xp: ModuleType, x: Any, ctf: Any | None, inv_sigma2: Any, h: np.ndarray, fy: np.ndarray,
                    fx: np.ndarray, box: int, refs_at_pose: Any, shift: np.ndarray,
                    scale: np.ndarray | None = None) -> np.ndarray:
    """The misfit (c,) float32 of every particle at its best sample (see the module docstring).

    ``x`` (c, F) the masked particles' transforms at the band's frequencies ``(fy, fx)`` (F,)
    (shells 1 .. band) with multiplicities ``h``; ``ctf`` (c, F) or None; ``inv_sigma2`` (c, F);
    ``refs_at_pose`` (c, F) each particle's class average rotated to its best in-plane angle (the
    E-step's 2x padded bilinear rotation) at those frequencies; ``shift`` (c, 2) its centre
    displacement (px); ``scale`` (c,) its contrast scale (None: 1).
    """
    from cryoframe.backend import to_host

    c = x.shape[0]
    hx = xp.asarray(h)
    norm = float(np.sqrt(np.sum(np.asarray(h) ** 2)))
    if norm == 0 or c == 0:
        return np.full(c, np.nan, dtype=np.float32)
    sx, sy = xp.asarray(shift[:, 0, None]), xp.asarray(shift[:, 1, None])
    model = refs_at_pose * xp.exp(-2j * np.pi * (xp.asarray(fx[None, :]) * sx + xp.asarray(fy[None, :]) * sy) / box)
    if ctf is not None:
        model = model * ctf
    a = xp.asarray(np.ones(c) if scale is None else np.asarray(scale, dtype=np.float64))
    r = x - a[:, None] * model
    chi = (hx * (0.5 * (r.real**2 + r.imag**2) * inv_sigma2 - 1.0)).sum(1)  # the residual's excess power
    sig = (hx * (0.5 * (x.real**2 + x.imag**2) * inv_sigma2 - 1.0)).sum(1)  # the particle's own
    unexplained = chi / xp.maximum(sig, norm)
    return to_host(xp.minimum(chi / norm, FRACTION_SCALE * unexplained)).astype(np.float32)
