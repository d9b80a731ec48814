"""Per-partition work of 3D classification with fixed poses: Fourier crop of the particles, the
scale/noise pass against the consensus, and the E-step (class log-likelihoods, posteriors and the
posterior-weighted Fourier sums of every class).

Every function here maps one partition (its images and per-particle geometry) to arrays that the
driver adds over partitions with a tree sum (:func:`cryoframe.distributed.mapreduce.tree_reduce`),
so a worker's memory is bounded by its partition and the class grids, never by the data set.

Likelihood (per particle ``i`` and class ``k``; over the half-plane frequencies ``j`` of shells
``1 .. r_max`` of the working box)::

    ll_ik = - sum_j |f_ij - a_i c_ij P_k(R_i)_j|^2 / s_g(shell j)

``f`` the centred (shift-applied) particle transform, ``c`` its CTF, ``a`` its scale, ``P_k(R_i)``
the central slice of class ``k``'s model volume at the particle's fixed pose and ``s_g`` the noise
power per shell of the particle's noise group (``E|noise|^2`` per complex Fourier component, so
this is the complex Gaussian log-likelihood up to a constant).  The M-step sums insert ``f`` with
CTF ``a c`` and weight ``posterior`` (:func:`cryoframe.geometry.fourier.insert_slices`), giving
``sum p a c f`` and ``sum p a^2 c^2``: the least-squares estimate of the volume under this model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoframe.backend import get_array_module, to_host
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.ctf import ctf_grid

__all__ = ["estep_partition", "freq_layout", "prepare_partition", "scale_partition"]

#: posteriors below this are not inserted (RELION's "significant" samples, soft classification)
MIN_WEIGHT = 1e-4


def freq_layout(box: int, r_max: float) -> dict[str, np.ndarray]:
    """Frequencies of the likelihood: ``flat`` indices in a raveled (box, box // 2 + 1) half plane of
    shells 1 .. r_max, their ``kx``, ``ky``, ``shell`` (rounded radius) and the 0/1 matrix ``onehot`` (m, nshell)."""
    kx, ky, flat = fo.image_freqs(box, r_max)
    shell = np.rint(np.hypot(kx, ky)).astype(np.int64)
    keep = shell >= 1
    flat, shell = flat[keep], shell[keep]
    nsh = box // 2 + 1
    onehot = np.zeros((len(flat), nsh), dtype=np.float32)
    onehot[np.arange(len(flat)), shell] = 1.0
    return {"flat": flat, "shell": shell, "onehot": onehot, "kx": kx[keep], "ky": ky[keep]}


def prepare_partition(images: Any, geom: dict[str, Any], *, box: int, psize_A: float, device: str = "cpu",
                      batch: int = 512) -> dict[str, Any]:
    """The fixed per-particle inputs of every E-step of one partition: ``f`` (n, b, b//2+1) complex64
    centred (shift-applied) transforms and ``c`` (n, b, b//2+1) float32 CTFs (ones without CTF).
    Computed once and kept (persisted) when the data fit in memory."""
    xp = get_array_module(device)
    n = len(geom["rot"])
    f = xp.empty((n, box, box // 2 + 1), dtype=xp.complex64)
    c = xp.ones((n, box, box // 2 + 1), dtype=xp.float32)
    ctf = geom.get("ctf")
    for s in range(0, n, batch):
        idx = np.arange(s, min(n, s + batch))
        img = xp.asarray(np.asarray(images[idx], dtype=np.float32))
        sl = slice(s, s + len(idx))
        f[sl] = fo.cfft2(img, xp) * fo.phase_shift(box, geom["shifts_px"][idx], xp)
        if ctf is not None:
            c[sl] = ctf_grid(box, psize_A, {k: v[idx] for k, v in ctf.items()}, xp=xp)
    return {"f": f, "c": c}


def _prepared(data: Any, geom: dict[str, Any], box: int, psize_A: float, device: str) -> dict[str, Any]:
    return data if isinstance(data, dict) else prepare_partition(data, geom, box=box, psize_A=psize_A, device=device)


def scale_partition(data: Any, geom: dict[str, Any], consensus_ft: Any, *, box: int, psize_A: float, pad: int,
                    r_max: float, device: str = "cpu", batch: int = 512) -> np.ndarray:
    """Per particle and shell: ``|f|^2``, ``Re(conj(f) c P)`` and ``|c P|^2`` against the consensus
    projection ``P`` — (n, 3, box // 2 + 1) float64; the driver forms optimal scales and noise spectra."""
    xp = get_array_module(device)
    lay = freq_layout(box, r_max)
    fl, oh = xp.asarray(lay["flat"]), xp.asarray(lay["onehot"], dtype=xp.float64)
    vft = xp.asarray(consensus_ft)
    prep = _prepared(data, geom, box, psize_A, device)
    n = len(geom["rot"])
    out = np.zeros((n, 3, box // 2 + 1))
    for s in range(0, n, batch):
        idx = np.arange(s, min(n, s + batch))
        f, c = prep["f"][s:s + len(idx)], prep["c"][s:s + len(idx)]
        rot = xp.asarray(geom["rot"][idx]) if xp is not np else geom["rot"][idx]
        p = fo.extract_at(vft, rot, lay["kx"], lay["ky"], pad, xp)
        m = len(idx)
        fj = f.reshape(m, -1)[:, fl]
        cp = c.reshape(m, -1)[:, fl] * p
        terms = xp.stack([(fj.real ** 2 + fj.imag ** 2), (fj.conj() * cp).real, (cp.real ** 2 + cp.imag ** 2)], 1)
        out[idx] = to_host(terms.astype(xp.float64) @ oh)
    return out


def estep_partition(data: Any, geom: dict[str, Any], grids: Any | None, state: dict[str, Any], *, box: int,
                    psize_A: float, pad: int, r_max: float, device: str = "cpu", fixed_post: np.ndarray | None = None,
                    local: np.ndarray | None = None, hard: bool = False, sums: bool = True,
                    batch: int = 256) -> dict[str, Any]:
    """E-step (and M-step sums) of one partition: ``data`` its images or :func:`prepare_partition`'s
    dict; ``local`` the rows of the partition to use (default all; outputs follow its order).

    ``geom``: ``rot`` (n, 3, 3), ``shifts_px`` (n, 2), ``ctf`` (dict of (n,) or None), ``alpha`` (n,),
    ``group`` (n,) int noise-group index, ``half`` (n,) 0/1.  ``grids`` (2, K, P, P, P//2+1) complex
    projector grids of the class model volumes of each half (particles of half h meet half 1 - h's;
    (1, K, ...) with ``same_maps``); ``state``: ``inv_noise`` (G, nshell) ``1 / s_g``,
    ``log_prior`` (K,), ``temperature`` (likelihood multiplier, <= 1 flattens early posteriors),
    ``r_lik`` (cycles per box: the likelihood uses shells up to it; the classes' current resolution),
    ``r_cur`` (projection, residual and insertion radius), ``same_maps`` (both halves' grids are the same maps).
    ``fixed_post`` (n, K): skip the likelihood and insert with these weights (initialisation).

    Returns ``post`` (n, K) float32, ``logev`` (n,) the per-particle log evidence (log-sum-exp of the
    tempered scores), ``sums`` (K, 2, P, P, P//2+1, 3) float32 per class and half (``sum p a c f`` real,
    imaginary, ``sum p a^2 c^2``; :func:`cryoframe.geometry.fourier.new_sums`), ``noise`` (G, nshell) the best class's residual power summed per
    group and shell and ``noise_n`` (G,) particles per group.
    """
    xp = get_array_module(device)
    prep = _prepared(data, geom, box, psize_A, device)
    rows = np.arange(len(geom["rot"])) if local is None else np.asarray(local)
    n = len(rows)
    if fixed_post is None and grids is None:
        raise ValueError("estep_partition needs the class grids or fixed posteriors")
    K = int(fixed_post.shape[1]) if fixed_post is not None else int(grids.shape[1])  # type: ignore[union-attr]
    nsh = box // 2 + 1
    # projection, residual power and insertion up to r_cur (RELION's current size); likelihood up to r_lik
    r_cur = r_max if fixed_post is not None else min(r_max, float(state.get("r_cur", r_max)))
    lay = freq_layout(box, r_cur)
    fl, oh = xp.asarray(lay["flat"]), xp.asarray(lay["onehot"])
    shell = xp.asarray(lay["shell"])
    r_lik = min(r_cur, float(state.get("r_lik", r_cur)))
    same = bool(state.get("same_maps", False))
    lik = xp.asarray((lay["shell"] <= r_lik + 1e-9).astype(np.float32))
    post = np.zeros((n, K), dtype=np.float32)
    logev = np.zeros(n)
    G = state["inv_noise"].shape[0] if fixed_post is None else 1
    noise = np.zeros((G, nsh))
    noise_n = np.zeros(G)
    acc = None
    if sums:
        acc = [[fo.new_sums(box, pad, xp, dtype=xp.float32) for _ in (0, 1)] for _ in range(K)]
    g_dev: Any = None if grids is None else xp.asarray(grids)
    inv: Any = None if fixed_post is not None else xp.asarray(state["inv_noise"], dtype=xp.float32)
    for s in range(0, n, batch):
        idx = np.arange(s, min(n, s + batch))  # output positions
        src = rows[idx]  # rows of the partition
        m = len(idx)
        src_d = xp.asarray(src) if xp is not np else src
        f, c = prep["f"][src_d], prep["c"][src_d]
        a = xp.asarray(geom["alpha"][src], dtype=xp.float32)
        rot_h = geom["rot"][src]
        if fixed_post is None:
            fj = f.reshape(m, -1)[:, fl]
            cj = c.reshape(m, -1)[:, fl]
            w = inv[xp.asarray(geom["group"][src])][:, shell] * lik[None, :]  # (m, M) 1/s within r_lik
            base = xp.sum(w * (fj.real ** 2 + fj.imag ** 2), axis=1)
            ll = xp.empty((m, K), dtype=xp.float64)
            slices = []
            hb = geom["half"][src]
            rot_d = xp.asarray(rot_h) if xp is not np else rot_h
            for k in range(K):
                if same:
                    pj = fo.extract_at(g_dev[0, k], rot_d, lay["kx"], lay["ky"], pad, xp)
                else:  # a particle of half h meets the maps of the other half: no self-reinforcement
                    pj = xp.zeros(fj.shape, dtype=xp.complex64)
                    for h in (0, 1):
                        sel = np.flatnonzero(hb == h)
                        if len(sel):
                            sd = xp.asarray(sel) if xp is not np else sel
                            r_sel = xp.asarray(rot_h[sel]) if xp is not np else rot_h[sel]
                            pj[sd] = fo.extract_at(g_dev[1 - h, k], r_sel, lay["kx"], lay["ky"], pad, xp)
                pj = pj * cj
                cross = xp.sum(w * (fj.conj() * pj).real, axis=1)
                pw = xp.sum(w * (pj.real ** 2 + pj.imag ** 2), axis=1)
                ll[:, k] = -(base - 2.0 * a * cross + a * a * pw)
                slices.append(pj)
            score = ll * float(state.get("temperature", 1.0)) + xp.asarray(state["log_prior"])[None, :]
            mx = score.max(axis=1, keepdims=True)
            e = xp.exp(score - mx)
            tot = e.sum(axis=1, keepdims=True)
            p = e / tot
            logev[idx] = to_host((mx + xp.log(tot))[:, 0])
            best = xp.argmax(p, axis=1)
            # residual power of the best class per shell -> noise spectra of the groups
            pb = xp.stack(slices, 1)[xp.arange(m), best]
            r = fj - a[:, None] * pb
            per_shell = to_host((r.real ** 2 + r.imag ** 2) @ oh)
            grp = geom["group"][src]
            np.add.at(noise, grp, per_shell)
            noise_n += np.bincount(grp, minlength=G)
            p_h = to_host(p).astype(np.float32)
            if hard:
                hp = np.zeros_like(p_h)
                hp[np.arange(m), to_host(best)] = 1.0
                wts = hp
            else:
                wts = p_h
        else:
            p_h = np.asarray(fixed_post[idx], dtype=np.float32)
            wts = p_h
        post[idx] = p_h
        if acc is None:
            continue
        ca = c * a[:, None, None]
        half = geom["half"][src]
        for k in range(K):
            for h in (0, 1):
                sel = np.flatnonzero((wts[:, k] > MIN_WEIGHT) & (half == h))
                if len(sel) == 0:
                    continue
                sd = xp.asarray(sel) if xp is not np else sel
                r_sel = xp.asarray(rot_h[sel]) if xp is not np else rot_h[sel]
                fo.insert_slices(acc[k][h], r_sel, f[sd], ca[sd], wts[sel, k].astype(np.float64), box, pad, r_cur, xp)
    out: dict[str, Any] = {"post": post, "logev": logev, "noise": noise, "noise_n": noise_n}
    if acc is not None:
        out["sums"] = np.stack([np.stack([to_host(acc[k][h]).astype(np.float32) for h in (0, 1)]) for k in range(K)])
    return out
