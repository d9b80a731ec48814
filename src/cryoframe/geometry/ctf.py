"""The one CTF implementation of cryoframe (2D classification, 3D projection/reconstruction and
synthetic data all call it), for NumPy or CuPy arrays.

RELION's ``CTF::getCTF`` convention: defocus ``df1_A``/``df2_A`` (Å, positive = underfocus) along
the astigmatism angle ``df_angle_rad`` measured from the x axis and perpendicular to it,
``d(a) = (df1 + df2)/2 + (df1 - df2)/2 cos(2 (a - df_angle))``,
``chi = pi lambda d s^2 - pi/2 Cs lambda^3 s^4 + phase_shift`` and
``CTF = sqrt(1 - A^2) sin(chi) + A cos(chi)``, so ``CTF(0) = +A``: positive density images bright,
as RELION expects of extracted (contrast-inverted) particles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["CTF_PARAMS", "ctf_at", "ctf_grid", "electron_wavelength_A"]

#: keyword names of the CTF parameters, in order (``phase_shift_rad`` may be omitted: 0)
CTF_PARAMS = ("df1_A", "df2_A", "df_angle_rad", "accel_kv", "cs_mm", "amp_contrast", "phase_shift_rad")


def electron_wavelength_A(accel_kv: ArrayLike, xp: ModuleType = np) -> Any:
    """Relativistic electron wavelength (Å) for an acceleration voltage in kV.

    ``lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` with ``V`` in volts (RELION's formula);
    300 kV gives 0.019687 Å.
    """
    v = xp.asarray(accel_kv, dtype=xp.float64) * 1e3
    return 12.2643247 / xp.sqrt(v * (1.0 + v * 0.978466e-6))


def ctf_at(sx: Any, sy: Any, df1_A: ArrayLike, df2_A: ArrayLike, df_angle_rad: ArrayLike, accel_kv: ArrayLike,
           cs_mm: ArrayLike, amp_contrast: ArrayLike, phase_shift_rad: ArrayLike = 0.0, *,
           xp: ModuleType = np) -> Any:
    """CTF (float64) at spatial frequencies ``(sx, sy)`` (1/Å); all arguments broadcast together.

    See the module docstring for the formula and sign.
    """
    sx = xp.asarray(sx, dtype=xp.float64)
    sy = xp.asarray(sy, dtype=xp.float64)

    def f(v: ArrayLike) -> Any:
        return xp.asarray(v, dtype=xp.float64)

    lam = electron_wavelength_A(accel_kv, xp)
    df1, df2 = f(df1_A), f(df2_A)
    s2 = sx * sx + sy * sy
    d = 0.5 * (df1 + df2) + 0.5 * (df1 - df2) * xp.cos(2.0 * (xp.arctan2(sy, sx) - f(df_angle_rad)))
    chi = math.pi * lam * d * s2 - 0.5 * math.pi * f(cs_mm) * 1e7 * lam**3 * s2 * s2 + f(phase_shift_rad)
    a = f(amp_contrast)
    return xp.sqrt(1.0 - a * a) * xp.sin(chi) + a * xp.cos(chi)


def ctf_grid(box: int, psize_A: float, params: Mapping[str, ArrayLike], *, rfft: bool = True,
             xp: ModuleType = np, dtype: Any = None) -> Any:
    """Per-particle CTF on the FFT grid of ``box`` px images of ``psize_A`` Å/px.

    ``params`` maps :data:`CTF_PARAMS` names to scalars or (n,) arrays (``phase_shift_rad``
    optional).  Unshifted FFT layout (DC at ``[0, 0]``); the half-plane of ``rfft2``
    (``(n, box, box // 2 + 1)``) when ``rfft`` else the full plane.  The leading axis is present
    when any parameter is an array; ``dtype`` defaults to float32.
    """
    vals = [xp.asarray(params.get(k, 0.0) if k == "phase_shift_rad" else params[k], dtype=xp.float64)
            for k in CTF_PARAMS]
    batched = any(v.ndim > 0 for v in vals)
    vals = [v.reshape(-1, 1, 1) for v in vals]
    fx = (np.fft.rfftfreq(box) if rfft else np.fft.fftfreq(box)) / psize_A
    fy = np.fft.fftfreq(box) / psize_A
    c = ctf_at(xp.asarray(fx[None, :]), xp.asarray(fy[:, None]), *vals, xp=xp)
    c = c.astype(dtype or xp.float32)
    return c if batched else c[0]
