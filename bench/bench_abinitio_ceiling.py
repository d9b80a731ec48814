"""How much pose information the ab-initio bench data hold: poses searched against the map
reconstructed from the TRUE poses (the best reference ab initio could reach), no SGD.

Same particles as ``bench_abinitio.py`` (``make_particles`` with the same size, SNR and seed).  The
working-box map is :class:`~cryoframe.algorithms.abinitio.AbInitio`'s own Fourier sums of all
particles at their true poses and shifts; a held-out-free subset of ``--eval`` particles is then
searched with the given grids.  Reported per search: median pose error and fraction within 10 deg
(after the best global rotation and hand), the fraction of particles whose true pose scores better
than the pose found (search failures), and the search time.  ``--clean`` uses the noiseless
images (a model-consistency check: errors near the grid step).

    python bench/bench_abinitio_ceiling.py --particles 4000 --resolution 12

``--classes K`` (K > 1): the heterogeneous data of ``bench_abinitio.py --classes K``; one map per class
from its particles' true poses, and the ``--eval`` particles searched against all K maps with
ab-initio's soft search (as in its SGD iterations): the adjusted Rand index of the best-evidence
class, and the pose error under the true class.  This separates "the classes cannot be told apart at
this resolution" from "ab initio did not find the class maps".

``--exact``: the oracle bound, with no map and no search grid.  Each of the ``--eval`` particles is scored
with the exact generative model of its image: the true blob structure rendered analytically in a
candidate pose, shifted by the true shift, scaled by the true contrast, multiplied by the particle's
own CTF, against the image's white unit-variance noise (log-likelihood ``-|X - S(R)|^2 / 2``).  The
candidates are ``--local`` rotations drawn uniformly within ``--radius`` deg of the true pose (the
right basin given for free), then as many again within a quarter of that radius of the best one.
Reported: the error of the most likely candidate (MAP) and of the posterior mean rotation (weights
``exp(log-likelihood)`` over the first draw, a uniform prior on the ball), and the mean log-likelihood
drop at 5, 10 and 20 deg from the true pose.  No method that has to estimate the structure, the
shifts, the scale and the basin can expect to do better than this oracle on the same images.
``--global G`` also scores ``G`` rotations drawn uniformly over SO(3); the best of those farther than
``--radius`` from the true pose, refined by a draw within a quarter radius, replaces the local MAP when
it is more likely: the oracle that still knows the structure, CTF, scale and shift but not the basin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, record  # noqa: E402

SEARCHES = [(4, True, 15.0), (4, True, 12.0), (8, False, 7.5)]  # (n_candidates, bound, coarse step deg)


def true_pose_maps(a: argparse.Namespace, classes: int) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The bench particles (``classes`` structures) and an :class:`AbInitio` set up on them (components,
    noise model, working box; no SGD) whose class maps are its own Fourier sums of each class's
    particles at their true poses and shifts; with the true rotations, shifts and classes."""
    from scipy.spatial.transform import Rotation

    from cryoframe.algorithms.abinitio import AbInitio
    from cryoframe.geometry.ctf import CTF_PARAMS
    from cryoframe.synthetic.generators import OPTICS, make_particles

    n, psize = a.particles, 2.0 * 64 / a.box
    imgs, t = make_particles(n, a.box, classes, a.snr, psize, "3d", a.seed, return_clean=a.clean)
    if a.clean:
        imgs = t["clean"]
    ctf = {k: t[k] if k in t else np.full(n, OPTICS[k]) for k in CTF_PARAMS}
    true = Rotation.from_rotvec(t["pose"]).as_matrix()
    shift = -t["shift"]  # the stored shift centres the particle: minus the applied one
    cls = np.asarray(t["class"], dtype=int)
    m = AbInitio(classes, psize_A=psize, max_resolution_A=a.resolution, initial_iterations=0,
                 intermediate_iterations=0, final_iterations=0, final_passes=1, n_starts=1)
    m._final = lambda *args, **kw: None  # only the set-up of fit()
    m.fit(imgs, ctf)
    r, w = m.r_max_, m._noise_weights(None)
    for k in range(classes):
        sel = np.flatnonzero(cls == k)
        m._sums[k] = m._batch_sums(sel, true[sel][:, None], shift[sel][:, None], np.ones((len(sel), 1)), w, r)
    m._volumes_w = [m._volume(k, r) for k in range(classes)]
    m._sizes = np.full(classes, 1.0 / classes)
    return m, true, shift, cls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=4000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", type=float, default=12.0, help="search and map resolution (Å)")
    ap.add_argument("--eval", type=int, default=300, help="particles searched")
    ap.add_argument("--clean", action="store_true", help="noiseless images")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--classes", type=int, default=1, help="K > 1: class-assignment ceiling of K-class data")
    ap.add_argument("--exact", action="store_true", help="oracle bound: the exact generative model of each image")
    ap.add_argument("--local", type=int, default=600, help="--exact: candidate rotations per draw")
    ap.add_argument("--radius", type=float, default=30.0, help="--exact: radius (deg) of the first draw")
    ap.add_argument("--global", dest="n_global", type=int, default=0, help="--exact: rotations drawn over SO(3)")
    a = ap.parse_args()
    if a.exact:
        return exact_ceiling(a)
    if a.classes > 1:
        return classes_ceiling(a)

    from cryoframe.algorithms.abinitio.evaluate import pose_errors
    from cryoframe.algorithms.posesearch import Projector

    m, true, shift, _ = true_pose_maps(a, 1)
    n, r, w = a.particles, m.r_max_, m._noise_weights(None)
    ev = np.arange(min(a.eval, n))
    mm = m._comps.count(r)
    proj = Projector(m._volumes_w[0], m._comps, m.pad)
    rows = []
    for nc, bound, step in SEARCHES:
        m._search.n_candidates, m._search.bound, m._search.coarse_step_deg = nc, bound, step
        t0 = time.perf_counter()
        res, _ = m._search_all(ev, None, r, full=True)
        dt = time.perf_counter() - t0
        e = pose_errors(res[0].rot[:, 0], true[ev])
        e_true = m._search._errors(proj, m._X[ev, :mm], m._C[ev, :mm], w[:mm], true[ev][:, None],
                                   shift[ev][:, None], m.box_, mm)[:, 0]
        miss = float(np.mean(e_true < res[0].error[:, 0] - 1e-3))
        rows.append((nc, bound, step, e["median_deg"], e["within_10_deg"], miss, dt))
        print(f"candidates {nc} bound {bound} step {step}: median {e['median_deg']:.1f} deg, "
              f"within 10 {e['within_10_deg']:.2f}, true pose better {miss:.2f}, {dt:.1f} s", flush=True)
    if not a.no_record:
        cmd = (f"python bench/bench_abinitio_ceiling.py --particles {n} --box {a.box} --snr {a.snr} "
               f"--resolution {a.resolution} --eval {len(ev)}" + (" --clean" if a.clean else ""))
        lines = ["", "## ab-initio pose ceiling: search against the map from the true poses", "", f"`{cmd}`  ",
                 f"machine: {machine()}", "",
                 "| images | resolution Å | candidates | bound | coarse step deg | median pose error deg | within 10 deg "
                 "| true pose scores better | search s |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {'clean' if a.clean else f'SNR {a.snr}'} | {a.resolution} | {nc} | {bound} | {step} | {med:.1f} | "
                  f"{w10:.2f} | {miss:.2f} | {dt:.1f} |" for nc, bound, step, med, w10, miss, dt in rows]
        record(lines)
    return 0


def classes_ceiling(a: argparse.Namespace) -> int:
    """ARI and pose error of particles searched against the K true-pose class maps."""
    from sklearn.metrics import adjusted_rand_score

    from cryoframe.algorithms.abinitio.evaluate import pose_errors

    n, K = a.particles, a.classes
    m, true, _, cls = true_pose_maps(a, K)
    r = m.r_max_
    ev = np.arange(min(a.eval, n))
    t0 = time.perf_counter()
    res, evidence = m._search_all(ev, None, r, full=False, soft=True)
    dt = time.perf_counter() - t0
    lab = evidence.argmax(1)
    ari = adjusted_rand_score(cls[ev], lab)
    pe = pose_errors(np.stack([res[k].rot[i, 0] for i, k in enumerate(cls[ev])]), true[ev])
    print(f"K {K} at {a.resolution} Å: ARI {ari:.3f}, correct class {np.mean(lab == cls[ev]):.3f}, pose error under "
          f"the true class median {pe['median_deg']:.1f} deg, within 10 {pe['within_10_deg']:.2f}, {dt:.1f} s", flush=True)
    if not a.no_record:
        cmd = (f"python bench/bench_abinitio_ceiling.py --particles {n} --box {a.box} --snr {a.snr} "
               f"--resolution {a.resolution} --eval {len(ev)} --classes {K}")
        record(["", "## ab-initio class ceiling: search against the K maps from the true poses", "", f"`{cmd}`  ",
                f"machine: {machine()}", "",
                "| K | resolution Å | ARI | correct class | median pose error deg (true class) | within 10 deg | search s |",
                "|---|---|---|---|---|---|---|",
                f"| {K} | {a.resolution} | {ari:.3f} | {np.mean(lab == cls[ev]):.3f} | {pe['median_deg']:.1f} | "
                f"{pe['within_10_deg']:.2f} | {dt:.1f} |"])
    return 0


def _ball(rng: np.random.Generator, n: int, radius_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rotation vectors uniform in the ball of ``radius_deg`` (rad), and their angles (deg)."""
    ax = rng.standard_normal((n, 3))
    ax /= np.linalg.norm(ax, axis=1, keepdims=True)
    ang = np.deg2rad(radius_deg) * rng.random(n) ** (1 / 3)
    return ax * ang[:, None], np.rad2deg(ang)


def exact_ceiling(a: argparse.Namespace) -> int:
    """Pose errors of the oracle that knows the exact generative model of each image (``--exact``)."""
    from scipy.spatial.transform import Rotation

    import cryoframe.synthetic.physics as ph
    from cryoframe.synthetic.generators import OPTICS, _noise_sigma, make_particles

    psize = 2.0 * 64 / a.box
    n = min(a.eval, a.particles)
    imgs, t = make_particles(n, a.box, 1, a.snr, psize, "3d", a.seed)
    sigma = _noise_sigma(a.seed, a.box, 1, psize, "3d", True, a.snr)
    cm, pm, am = ph.blob_model(1, a.box, a.seed, 3)
    H = ph.ctf_2d(a.box, psize, t["df1_A"], t["df2_A"], t["df_angle_rad"], OPTICS["accel_kv"], OPTICS["cs_mm"],
                  OPTICS["amp_contrast"], OPTICS["phase_shift_rad"])
    true = Rotation.from_rotvec(t["pose"])

    def loglik(i: int, rots: np.ndarray) -> np.ndarray:
        m = len(rots)
        c, p, amp = ph.project_blobs(np.repeat(cm[:1], m, 0), np.repeat(pm[:1], m, 0),
                                     np.repeat(am[:1] * t["scale"][i], m, 0), rots, np.repeat(t["shift"][i:i + 1], m, 0))
        s = ph.apply_ctf(ph.render_blobs(c, p, amp, a.box), np.repeat(H[i:i + 1], m, 0)) / sigma
        return -0.5 * ((imgs[i][None].astype(np.float64) - s) ** 2).sum((1, 2))

    def angle(r: Rotation, i: int) -> float:
        return float(np.rad2deg((true[i].inv() * r).magnitude()))

    rng = np.random.default_rng(a.seed + 1)
    e_map, e_mean, e_glob, drops = [], [], [], {5: [], 10: [], 20: []}
    t0 = time.perf_counter()
    for i in range(n):
        v, ang = _ball(rng, a.local, a.radius)
        rots = true[i] * Rotation.from_rotvec(v)
        ll = loglik(i, rots.as_matrix())
        ll_true = loglik(i, true[i].as_matrix()[None])[0]
        for d, lst in drops.items():
            near = np.abs(ang - d) < 1.0
            lst.extend((ll_true - ll[near]).tolist())
        e_mean.append(angle(rots.mean(weights=np.exp(ll - ll.max())), i))  # the chordal L2 mean
        v2, _ = _ball(rng, a.local, a.radius / 4)
        rots2 = rots[int(ll.argmax())] * Rotation.from_rotvec(v2)
        ll2 = loglik(i, rots2.as_matrix())
        best, ll_best = (rots2[int(ll2.argmax())], ll2.max()) if ll2.max() > ll.max() else (rots[int(ll.argmax())], ll.max())
        e_map.append(angle(best, i))
        if a.n_global:
            g = Rotation.random(a.n_global, random_state=rng)
            far = np.flatnonzero(np.rad2deg((true[i].inv() * g).magnitude()) > a.radius)
            llg = loglik(i, g[far].as_matrix())
            v3, _ = _ball(rng, a.local, a.radius / 4)
            rots3 = g[far[int(llg.argmax())]] * Rotation.from_rotvec(v3)
            ll3 = loglik(i, rots3.as_matrix())
            far_best = max(llg.max(), ll3.max())
            e_glob.append(e_map[-1] if ll_best >= far_best else
                          angle(rots3[int(ll3.argmax())] if ll3.max() >= llg.max() else g[far[int(llg.argmax())]], i))
    dt = time.perf_counter() - t0
    em, ep = np.asarray(e_map), np.asarray(e_mean)
    drop = {d: float(np.mean(v)) for d, v in drops.items()}
    print(f"oracle MAP: median {np.median(em):.1f} deg, within 10 {np.mean(em < 10):.2f}, within 5 "
          f"{np.mean(em < 5):.2f}; posterior mean: median {np.median(ep):.1f} deg, within 10 {np.mean(ep < 10):.2f}; "
          f"log-likelihood drop {drop}; {dt:.0f} s", flush=True)
    eg = np.asarray(e_glob)
    if a.n_global:
        print(f"oracle MAP with {a.n_global} global rotations: median {np.median(eg):.1f} deg, within 10 "
              f"{np.mean(eg < 10):.2f}, beyond 45 deg {np.mean(eg > 45):.2f}", flush=True)
    if not a.no_record:
        cmd = (f"python bench/bench_abinitio_ceiling.py --exact --particles {a.particles} --box {a.box} --snr {a.snr} "
               f"--eval {n} --local {a.local} --radius {a.radius}" + (f" --global {a.n_global}" if a.n_global else ""))
        record(["", "## ab-initio oracle pose bound: the exact generative model of each image", "", f"`{cmd}`  ",
                f"machine: {machine()}", "",
                "| SNR | particles | estimator | median pose error deg | within 10 deg | within 5 deg "
                "| mean log-lik drop at 5 / 10 / 20 deg |", "|---|---|---|---|---|---|---|",
                f"| {a.snr} | {n} | oracle MAP | {np.median(em):.1f} | {np.mean(em < 10):.2f} | {np.mean(em < 5):.2f} | "
                f"{drop[5]:.1f} / {drop[10]:.1f} / {drop[20]:.1f} |",
                f"| {a.snr} | {n} | oracle posterior mean | {np.median(ep):.1f} | {np.mean(ep < 10):.2f} | "
                f"{np.mean(ep < 5):.2f} | |"]
               + ([f"| {a.snr} | {n} | oracle MAP, {a.n_global} rotations over SO(3) too (beyond 45 deg: "
                   f"{np.mean(eg > 45):.2f}) | {np.median(eg):.1f} | {np.mean(eg < 10):.2f} | {np.mean(eg < 5):.2f} | |"]
                  if a.n_global else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
