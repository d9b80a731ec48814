"""Pose search side by side with RELION 3.1: the same particles, the same map, no poses in the input.

The particles are bench_abinitio.py's synthetic set (chiral blob map, CTF, ``--snr``; ``synth_store``
with the same seed), exported by ``cryoframe export`` to ``.star`` + ``.mrcs``.  The map is RELION's:
``relion_reconstruct --ctf`` of all the particles at their TRUE poses (the export of the synthetic
store, which carries them).  Then both programs assign poses to the first ``--eval`` particles against
that one map, limited to ``--resolution``, from a ``.star``/store without poses:

* RELION: one expectation step of ``relion_refine`` (3D classification, ``--K 1 --iter 1 --ini_high R
  --ctf --ctf_corrected_ref``, HEALPix order ``--healpix-order`` with oversampling 1, offsets 6 px in
  2 px steps, ``--j`` the machine's cores); the poses of its ``run_it001_data.star``.  Without
  ``--ctf_corrected_ref`` RELION compares the first iteration's projections to the images without their
  CTF (its iteration 1 then gave 95-137 deg errors here, even on its own noiseless projections).
* cryoframe: the final search of ``AbInitio`` (branch and bound from a 15 deg grid to 1.875 deg, 1 px
  shift lattice, scale marginal), and the same search stopped at RELION's finest angular step against the same map Fourier-cropped to the working box, windowed as
  the fit windows its maps, and scaled onto the data's units by least squares against cryoframe's own
  reconstruction from the true poses (one number; the search's scale prior is centred on 1).

Wall times: RELION's is its whole ``relion_refine`` process (reading, the expectation step, the
maximisation that follows it, writing); cryoframe's is the search alone (its set-up is not timed).
``--classes K``: K structures, one map per class (RELION's reconstruction of that class's particles at
their true poses); RELION's expectation step runs with the K maps as references (``--K K``), cryoframe
scores every class with the soft search of its SGD iterations and final pass (the class evidences) and
takes the most probable class.  Reported: the fraction of particles put in their true class, the
adjusted Rand index, and the pose error of the correctly classified particles.

Both are scored by ``pose_errors`` (best global rotation and hand) against the true poses.  The
reference is the best map either program could reach at this resolution, so the row measures the
searches alone: the ceiling of an ab-initio run of each.

    python bench/bench_search_relion.py --particles 4000 --eval 1000 --resolution 12 --healpix-order 2
    python bench/bench_search_relion.py --particles 4000 --eval 1000 --classes 4 --healpix-order 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, record, run_timed  # noqa: E402
from bench_abinitio import relion_build, relion_result  # noqa: E402
from bench_abinitio_ceiling import true_pose_maps  # noqa: E402


def write_inputs(work: Path, a: argparse.Namespace) -> tuple[list[Path], Path, np.ndarray]:
    """The synthetic store's particles of each true class with their true poses (``true_k.star``), the
    first ``eval`` particles without poses or classes (``eval.star``), all sharing one ``.mrcs``; and the
    true classes."""
    import starfile

    from cryoframe import api
    from cryoframe.synthetic import synth_store

    src = work / "synth.cf"
    if not src.exists():
        synth_store(src, a.particles, box=a.box, classes=a.classes, snr=a.snr, seed=a.seed, kind="3d",
                    psize_A=2.0 * 64 / a.box)
    cls = np.load(src / "extras" / "truth.npz")["class"].astype(int)
    true_star = work / "true.star"
    if not true_star.exists():
        api.export(src, true_star, format="star", images=True)
    st = starfile.read(true_star, always_dict=True)
    p = st["particles"]
    if not {"rlnAngleRot", "rlnOriginXAngst"} <= set(p.columns) or len(p) != len(cls):
        raise RuntimeError(f"{true_star}: the export carries no true poses")
    stars = []
    for k in range(a.classes):
        stars.append(work / f"true_{k}.star")
        starfile.write({**st, "particles": p[cls == k]}, stars[-1], overwrite=True)
    drop = [c for c in p.columns if c.startswith(("rlnAngle", "rlnOrigin", "rlnClass", "rlnMaxValue", "rlnRandom"))]
    eval_star = work / "eval.star"
    starfile.write({**st, "particles": p.iloc[: a.eval].drop(columns=drop)}, eval_star, overwrite=True)
    return stars, eval_star, cls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=4000, help="particles of the reference reconstruction")
    ap.add_argument("--eval", type=int, default=1000, help="particles whose poses both programs search")
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=1, help="K structures, one true-pose map each")
    ap.add_argument("--resolution", type=float, default=12.0, help="search resolution (Å)")
    ap.add_argument("--healpix-order", type=int, default=2, help="RELION's HEALPix order (2: 15 deg, 7.5 deg oversampled)")
    ap.add_argument("--relion-exe", default="relion_refine")
    ap.add_argument("--workdir")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()

    import mrcfile
    import pandas as pd
    import starfile
    from sklearn.metrics import adjusted_rand_score

    from cryoframe.algorithms.abinitio.evaluate import pose_errors
    from cryoframe.geometry.fourier import resample_volume

    if shutil.which(a.relion_exe) is None:
        ap.error(f"{a.relion_exe} not found: this benchmark runs RELION 3.1 beside cryoframe (apt-get install relion)")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_search_relion_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    K, psize = a.classes, 2.0 * 64 / a.box
    stars, eval_star, cls = write_inputs(work, a)
    exe_dir = Path(a.relion_exe).parent if os.sep in a.relion_exe else None
    reconstruct = str(exe_dir / "relion_reconstruct") if exe_dir else "relion_reconstruct"
    refs = [work / f"ref_true_{k}.mrc" for k in range(K)]
    for star, ref in zip(stars, refs, strict=True):
        if not ref.exists():
            run_timed([reconstruct, "--i", star.name, "--o", ref.name, "--ctf"], work)
    ref_arg = refs[0].name
    if K > 1:
        starfile.write(pd.DataFrame({"rlnReferenceImage": [r.name for r in refs]}), work / "refs.star", overwrite=True)
        ref_arg = "refs.star"
    version, cpu = relion_build(a.relion_exe)
    cores = os.cpu_count() or 1
    out = work / f"relion_k{K}_o{a.healpix_order}"
    out.mkdir(exist_ok=True)
    cmd = [a.relion_exe, "--o", str(out / "run"), "--i", eval_star.name, "--ref", ref_arg, "--ini_high",
           f"{a.resolution:g}", "--iter", "1", "--K", str(K), "--sym", "C1", "--ctf", "--ctf_corrected_ref",
           "--particle_diameter", f"{0.8 * a.box * psize:.0f}", "--healpix_order", str(a.healpix_order),
           "--oversampling", "1", "--offset_range", "6", "--offset_step", "2", "--pad", "2",
           "--dont_combine_weights_via_disc", "--pool", "3", "--j", str(cores)] + (["--cpu"] if cpu else [])
    rwall = run_timed(cmd, work)
    rrot, rlab, _ = relion_result(out / "run_it001", a.eval, K)

    ns = argparse.Namespace(particles=a.particles, box=a.box, snr=a.snr, seed=a.seed, resolution=a.resolution,
                            clean=False)
    m, true, _, tcls = true_pose_maps(ns, K)
    if not np.array_equal(tcls, cls):
        raise RuntimeError("the store's true classes are not the ones true_pose_maps rebuilt")
    vols = []
    for k, ref in enumerate(refs):
        with mrcfile.open(ref, permissive=True) as f:
            vol = resample_volume(np.asarray(f.data), m.working_box_).astype(np.float64) * m._window
        vols.append((vol * float((vol * m._volumes_w[k]).sum() / (vol * vol).sum())).astype(np.float32))
    m._volumes_w = vols
    m.__dict__.pop("_projectors", None)
    idx = np.arange(a.eval)
    relion_fine = 30 / 2 ** a.healpix_order
    runs: list[tuple[str, str, np.ndarray, np.ndarray, float]] = []
    if K == 1:
        for who, fine in (("cryoframe", m.fine_step_deg), ("cryoframe at RELION's angular sampling", relion_fine)):
            m._search.fine_step_deg = fine
            t0 = time.perf_counter()
            rot = np.concatenate([m._search_all(idx[s:s + 1024], None, m.r_max_, full=True)[0][0].rot[:, 0]
                                  for s in range(0, a.eval, 1024)])
            runs.append((who, f"{m.final_coarse_step_deg:g} deg grid, branch and bound to {fine:g} deg; 1 px shifts",
                         rot, np.zeros(a.eval, dtype=int), time.perf_counter() - t0))
    else:  # the class evidences of the SGD iterations and the final pass: the soft search against every class
        t0 = time.perf_counter()
        res, ev = m._search_all(idx, None, m.r_max_, full=False, soft=True)
        lab = ev.argmax(1)
        runs.append(("cryoframe", f"{m.coarse_step_deg:g} deg grid against every class (no branching); 1 px shifts",
                     np.stack([res[k].rot[i, 0] for i, k in enumerate(lab)]), lab, time.perf_counter() - t0))
    runs.append(("RELION 3.1 `relion_refine` E-step", f"HEALPix order {a.healpix_order}, oversampling 1 "
                 f"({60 / 2 ** a.healpix_order:g} -> {relion_fine:g} deg); 2 px, oversampled 1 px", rrot, rlab, rwall))
    rows = []
    for who, sampling, rot, lab, wall in runs:
        ok = lab == cls[idx]  # the pose under the particle's true class
        e = pose_errors(rot[ok], true[idx][ok])
        ari = adjusted_rand_score(cls[idx], lab) if K > 1 else float("nan")
        rows.append((who, sampling, wall, e["median_deg"], e["within_10_deg"], float(ok.mean()), ari))
        print(f"{who}: median {e['median_deg']:.1f} deg, within 10 deg {e['within_10_deg']:.2f}, correct class "
              f"{ok.mean():.3f}, ARI {ari:.3f}, {wall:.0f} s", flush=True)
    if not a.no_record:
        c = (f"python bench/bench_search_relion.py --particles {a.particles} --eval {a.eval} --box {a.box} "
             f"--snr {a.snr} --classes {K} --resolution {a.resolution:g} --healpix-order {a.healpix_order}")
        lines = ["", "## pose search against one map, side by side with RELION (same particles, no poses in the input)"
                 if K == 1 else f"## classification and poses against {K} maps, side by side with RELION (same particles)",
                 "", f"`{c}`  ", f"machine: {machine()}", "",
                 f"Maps: `relion_reconstruct --ctf` of each true class's particles (of {a.particles}) at their true "
                 f"poses; searched up to {a.resolution:g} Å.  RELION: `{a.relion_exe}`, {version}, "
                 + ("`--cpu`" if cpu else "original CPU path") + f", `--j {cores}`.", "",
                 "| program | particles searched | sampling | wall (s) | median pose error (deg) | within 10 deg "
                 "| correct class | ARI |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {w} | {a.eval} | {s} | {t:.0f} | {med:.1f} | {w10:.2f} | {ok:.3f} | "
                  + ("-" if K == 1 else f"{ari:.3f}") + " |" for w, s, t, med, w10, ok, ari in rows]
        record(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
