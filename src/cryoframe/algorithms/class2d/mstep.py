"""Class2D's M-step: regularised class averages, priors, per-group noise spectra, tau2 and the
resolution of each class, from the E-step's summed statistics (RELION's maximisation step).

Units: spectra per Fourier shell of the ``box`` px images (shell = radius in px of frequency);
``st`` is the estimator state dict (refs, priors, sigma2, tau2, res_shell, e_data, wsum, ...),
``geo`` the geometry dict of ``Class2D._setup``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoframe.algorithms.class2d import estep as es

__all__ = ["E_MARGIN", "e_shell", "finish_refs", "m_step", "noise_spectra", "tau2"]

E_MARGIN = 10  # E-step shells beyond the current resolution (RELION's incr_size)
_GROUP_PRIOR = 10.0  # a group's noise spectrum is shrunk towards the global one with this many particles


def e_shell(st: dict[str, Any], geo: dict[str, Any]) -> int:
    """E-step frequency limit: current resolution + ``E_MARGIN`` shells, within ``e_max`` (RELION's
    ``current_size``)."""
    return int(min(geo["e_max"], int(np.max(st["res_shell"], initial=0)) + E_MARGIN))


def noise_spectra(st: dict[str, Any], stats: dict[str, np.ndarray], box: int) -> np.ndarray:
    """Per-group noise spectra (G, nsh): each group's residual power, shrunk towards the global
    spectrum with the weight of ``_GROUP_PRIOR`` particles; groups absent from the batch keep theirs."""
    ms = 2.0 * es.shell_matrix(box).sum(0)  # real components per shell
    cnt = stats["count"].astype(np.float64)
    glob = stats["noise"].sum(0) / (ms * max(float(cnt.sum()), 1e-300))
    new = (stats["noise"] + _GROUP_PRIOR * ms * glob) / (ms[None] * (cnt[:, None] + _GROUP_PRIOR))
    old = np.broadcast_to(st["sigma2"], new.shape)
    return np.maximum(np.where((cnt[:, None] > 0) & np.isfinite(new), new, old), 1e-30)


def m_step(st: dict[str, Any], stats: dict[str, np.ndarray], n: float, geo: dict[str, Any], *, tau_fudge: float,
           scale_correction: bool, center: bool) -> None:
    """Regularised class averages A = num / (den + 1 / (T tau2)) (num, den carry 1/sigma2 of each
    particle's group, as RELION's weighted back-projection), priors, noise spectra, resolution."""
    box, k = geo["box"], geo["K"]
    sh = np.minimum(es.shell_map(box), box // 2 - 1)
    num, den = stats["num"], stats["den"]
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(den > 0, num / den, 0)  # unregularised average: estimates tau2 of new shells
        t_raw = es.shell_average(raw.real**2 + raw.imag**2, box) / 2.0 - np.where(
            es.shell_average(den, box) > 0, 1.0 / es.shell_average(den, box), 0.0)
    # shells the previous averages had no data for (the E-step limit grew) take tau2 from the data
    e_now, e_before = e_shell(st, geo), int(st.get("e_data", box // 2 - 1))
    fresh = (np.arange(box // 2) > e_before) & (np.arange(box // 2) <= e_now)
    t2 = np.where(fresh[None], np.maximum(np.nan_to_num(t_raw), 0.0), st["tau2"])
    tau = t2[:, sh]
    with np.errstate(divide="ignore", invalid="ignore"):
        reg = np.where(tau > 0, 1.0 / (tau_fudge * tau), np.inf)
        a = np.where(den > 0, num / (den + reg), 0.0)
    a = np.nan_to_num(a)
    if scale_correction:  # fix the scale degeneracy A <-> a: mean particle scale 1 per class
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_a = np.where(stats["wsum"] > 0, stats["asum"] / stats["wsum"], 1.0)
        a = a * np.where(mean_a > 0, mean_a, 1.0)[:, None, None]
    st["refs"] = finish_refs(a, geo, center)
    st["priors"] = np.maximum(stats["wsum"], 0) / max(float(stats["wsum"].sum()), 1e-300)
    st["sigma2"] = noise_spectra(st, stats, box)
    st["tau2"] = tau2(st["refs"], box)
    ssnr = st["tau2"] * es.shell_average(den, box)
    res = np.zeros(k, dtype=np.int64)
    for j in range(k):
        low = np.nonzero(ssnr[j, 1:] < 1.0)[0]
        res[j] = (low[0] if len(low) else box // 2 - 1)
    st["res_shell"] = res
    st["e_data"] = np.asarray(e_now)
    st["wsum"] = stats["wsum"] * (n / max(float(stats["wsum"].sum()), 1e-300))


def finish_refs(a_f: np.ndarray, geo: dict[str, Any], center: bool) -> np.ndarray:
    """Real-space, masked averages (K, box, box) from centred Fourier averages ``a_f``; with
    ``center``, each is first shifted so its positive mass is centred in the box."""
    box = geo["box"]
    if center:
        img = es.icfft2(np, a_f, box) * geo["mask"]
        pos = np.maximum(img, 0)
        g = np.arange(box) - box // 2
        tot = pos.sum((1, 2))
        ok = tot > 0
        cx = np.where(ok, (pos * g[None, None, :]).sum((1, 2)) / np.where(ok, tot, 1), 0.0)
        cy = np.where(ok, (pos * g[None, :, None]).sum((1, 2)) / np.where(ok, tot, 1), 0.0)
        fy, fx = es.freq_yx(box)
        phase = fx[None] * cx[:, None, None] + fy[None] * cy[:, None, None]
        a_f = a_f * np.exp(2j * np.pi * phase / box)  # moves the centre of mass to the box centre
    return (es.icfft2(np, a_f, box) * geo["mask"]).astype(np.float32)


def tau2(refs: np.ndarray, box: int) -> np.ndarray:
    """Signal power per shell (K, box // 2) of the averages ``refs`` (per real Fourier component)."""
    f = es.cfft2(np, refs.astype(np.float64))
    return es.shell_average(f.real**2 + f.imag**2, box) / 2.0
