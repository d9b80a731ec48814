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
Both are scored by ``pose_errors`` (best global rotation and hand) against the true poses.  The
reference is the best map either program could reach at this resolution, so the row measures the
searches alone: the ceiling of an ab-initio run of each.

    python bench/bench_search_relion.py --particles 4000 --eval 1000 --resolution 12 --healpix-order 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, record  # noqa: E402
from bench_abinitio import relion_build, relion_result  # noqa: E402
from bench_abinitio_ceiling import true_pose_maps  # noqa: E402


def write_inputs(work: Path, a: argparse.Namespace) -> tuple[Path, Path]:
    """The synthetic store exported with its true poses (``true.star``) and the first ``eval`` particles
    without poses (``eval.star``), sharing one ``.mrcs``."""
    import starfile

    from cryoframe import api
    from cryoframe.testing.synth import synth_store

    src = work / "synth.cf"
    if not src.exists():
        synth_store(src, a.particles, box=a.box, classes=1, snr=a.snr, seed=a.seed, kind="3d",
                    psize_A=2.0 * 64 / a.box)
    true_star = work / "true.star"
    if not true_star.exists():
        api.export(src, true_star, format="star", images=True)
    st = starfile.read(true_star, always_dict=True)
    p = st["particles"]
    if not {"rlnAngleRot", "rlnOriginXAngst"} <= set(p.columns):
        raise RuntimeError(f"{true_star}: the export carries no true poses")
    st["particles"] = p.iloc[: a.eval].drop(columns=[c for c in p.columns if c.startswith(("rlnAngle", "rlnOrigin"))])
    eval_star = work / "eval.star"
    starfile.write(st, eval_star, overwrite=True)
    return true_star, eval_star


def run(cmd: list[str], cwd: Path) -> float:
    print(" ".join(cmd), flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
    return time.perf_counter() - t


def cropped(vol: np.ndarray, wb: int) -> np.ndarray:
    """``vol`` (b, b, b) Fourier-cropped to ``wb`` (b even, wb even)."""
    b = vol.shape[0]
    f = np.fft.fftshift(np.fft.fftn(vol))
    lo = b // 2 - wb // 2
    return np.real(np.fft.ifftn(np.fft.ifftshift(f[lo:lo + wb, lo:lo + wb, lo:lo + wb])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=4000, help="particles of the reference reconstruction")
    ap.add_argument("--eval", type=int, default=1000, help="particles whose poses both programs search")
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", type=float, default=12.0, help="search resolution (Å)")
    ap.add_argument("--healpix-order", type=int, default=2, help="RELION's HEALPix order (2: 15 deg, 7.5 deg oversampled)")
    ap.add_argument("--relion-exe", default="relion_refine")
    ap.add_argument("--workdir")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()

    import mrcfile

    from cryoframe.algorithms.abinitio.evaluate import pose_errors

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_search_relion_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    psize = 2.0 * 64 / a.box
    true_star, eval_star = write_inputs(work, a)
    exe_dir = Path(a.relion_exe).parent if os.sep in a.relion_exe else None
    reconstruct = str(exe_dir / "relion_reconstruct") if exe_dir else "relion_reconstruct"
    ref = work / "ref_true.mrc"
    if not ref.exists():
        run([reconstruct, "--i", true_star.name, "--o", ref.name, "--ctf"], work)
    version, cpu = relion_build(a.relion_exe)
    cores = os.cpu_count() or 1
    out = work / f"relion_o{a.healpix_order}"
    out.mkdir(exist_ok=True)
    cmd = [a.relion_exe, "--o", str(out / "run"), "--i", eval_star.name, "--ref", ref.name, "--ini_high",
           f"{a.resolution:g}", "--iter", "1", "--K", "1", "--sym", "C1", "--ctf", "--ctf_corrected_ref",
           "--particle_diameter", f"{0.8 * a.box * psize:.0f}", "--healpix_order", str(a.healpix_order),
           "--oversampling", "1", "--offset_range", "6", "--offset_step", "2", "--pad", "2",
           "--dont_combine_weights_via_disc", "--pool", "3", "--j", str(cores)] + (["--cpu"] if cpu else [])
    rwall = run(cmd, work)
    rrot, _, _ = relion_result(out / "run_it001", a.eval, 1)

    ns = argparse.Namespace(particles=a.particles, box=a.box, snr=a.snr, seed=a.seed, resolution=a.resolution,
                            clean=False)
    m, true, _, _ = true_pose_maps(ns, 1)
    ours = m._volumes_w[0]
    with mrcfile.open(ref, permissive=True) as f:
        vol = cropped(np.asarray(f.data, dtype=np.float64), m.working_box_) * m._window
    scale = float((vol * ours).sum() / (vol * vol).sum())
    m._volumes_w = [(vol * scale).astype(np.float32)]
    m.__dict__.pop("_projectors", None)
    idx = np.arange(a.eval)

    def search(fine_step: float) -> tuple[np.ndarray, float]:
        m._search.fine_step_deg = fine_step
        t0 = time.perf_counter()
        rot = np.concatenate([m._search_all(idx[s:s + 1024], None, m.r_max_, full=True)[0][0].rot[:, 0]
                              for s in range(0, a.eval, 1024)])
        return rot, time.perf_counter() - t0

    rot, cwall = search(m.fine_step_deg)
    relion_fine = 30 / 2 ** a.healpix_order
    rot_r, cwall_r = search(relion_fine)
    rows = []
    for who, r, wall, sampling in (("cryoframe", rot, cwall, f"{m.final_coarse_step_deg:g} deg grid, branch and bound "
                                    f"to {m.fine_step_deg:g} deg; 1 px shifts"),
                                   ("cryoframe at RELION's angular sampling", rot_r, cwall_r,
                                    f"{m.final_coarse_step_deg:g} deg grid, branch and bound to {relion_fine:g} deg; "
                                    "1 px shifts"),
                                   ("RELION 3.1 `relion_refine` E-step", rrot, rwall,
                                    f"HEALPix order {a.healpix_order}, oversampling 1 "
                                    f"({60 / 2 ** a.healpix_order:g} -> {30 / 2 ** a.healpix_order:g} deg); 2 px, oversampled 1 px")):
        e = pose_errors(r, true[idx])
        rows.append((who, sampling, wall, e["median_deg"], e["within_10_deg"]))
        print(f"{who}: median {e['median_deg']:.1f} deg, within 10 deg {e['within_10_deg']:.2f}, {wall:.0f} s", flush=True)
    if not a.no_record:
        c = (f"python bench/bench_search_relion.py --particles {a.particles} --eval {a.eval} --box {a.box} "
             f"--snr {a.snr} --resolution {a.resolution:g} --healpix-order {a.healpix_order}")
        lines = ["", "## pose search against one map, side by side with RELION (same particles, no poses in the input)",
                 "", f"`{c}`  ", f"machine: {machine()}", "",
                 f"Map: `relion_reconstruct --ctf` of all {a.particles} particles at their true poses; searched up to "
                 f"{a.resolution:g} Å.  RELION: `{a.relion_exe}`, {version}, "
                 + ("`--cpu`" if cpu else "original CPU path") + f", `--j {cores}`.", "",
                 "| program | particles searched | sampling | wall (s) | median pose error (deg) | within 10 deg |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {w} | {a.eval} | {s} | {t:.0f} | {med:.1f} | {w10:.2f} |" for w, s, t, med, w10 in rows]
        record(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
