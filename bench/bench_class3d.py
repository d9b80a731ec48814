"""3D classification without alignment: cryoframe class3d vs RELION 3.1 relion_refine --skip_align on the
same synthetic K-state .star + .mrcs (known poses), same seeds; wall time and ARI; rows in RESULTS.md.

    nice -n 15 python bench/bench_class3d.py --n 4000 --box 64 --classes 4 --iters 25 --snr 0.05 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, record, run_timed  # noqa: E402


def relion(star: Path, ref: Path, out: Path, k: int, iters: int, diameter: float, seed: int) -> tuple[float, np.ndarray]:
    # --ctf_corrected_ref: ``ref`` is a CTF-corrected reconstruction (the GUI's default "Ref. map is
    # CTF-corrected? Yes"); without it RELION's first iteration compares CTF-free projections with the
    # CTF-modulated images.
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["relion_refine", "--i", str(star), "--ref", str(ref), "--o", str(out / "run"), "--K", str(k), "--iter",
           str(iters), "--tau2_fudge", "4", "--skip_align", "--ctf", "--ctf_corrected_ref", "--particle_diameter", str(diameter),
           "--flatten_solvent", "--zero_mask", "--ini_high", "60", "--random_seed", str(seed), "--j", "2",
           "--pad", "2", "--oversampling", "1", "--healpix_order", "2", "--offset_range", "5", "--offset_step", "2",
           "--sym", "C1", "--norm", "--scale", "--dont_combine_weights_via_disc", "--pool", "3"]
    wall = run_timed(cmd, star.parent)
    from cryoframe.storage.formats.star import read_particles_star

    part = read_particles_star(out / f"run_it{iters:03d}_data.star").particles
    order = np.array([int(str(v).split("@")[0]) - 1 for v in part["rlnImageName"]])  # back to input order
    lab = np.empty(len(order), dtype=int)
    lab[order] = np.asarray(part["rlnClassNumber"], dtype=int) - 1
    return wall, lab


def scale(n: int, box: int, k: int, target_res: float | None, partition: int) -> None:
    """Time of one F-EM iteration for ``n`` particles into ``k`` classes; extrapolated linearly to 1e6."""
    from cryoframe.algorithms.class3d import Class3D
    from cryoframe.geometry.fourier import fourier_crop
    from cryoframe.geometry.rotations import pose_matrix
    from cryoframe.jobs.class3d import _working_box
    from cryoframe.testing.states3d import state_particles

    img, tr = state_particles(n, box, 4, 0.05, seed=0)
    bw = _working_box(box, tr["psize_A"], target_res)
    img = fourier_crop(img, bw)
    m = Class3D(k, 2, oem_epochs=0, partition_size=partition)
    t = time.perf_counter()
    m.fit(img, pose_matrix(tr["pose"]), tr["shift"] * bw / box, np.arange(n) % 2, psize_A=tr["psize_A"] * box / bw,
          ctf=tr["ctf"])
    total = time.perf_counter() - t
    it = m.history_[-1]["time_s"]
    print({"n": n, "box": box, "working_box": bw, "classes": k, "iteration_s": it, "fit_s": total}, flush=True)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    record([f"\n## class3d scale: one F-EM iteration ({now})", "",
            f"`{' '.join(sys.argv)}` on {machine()}", "",
            "| particles | box (working) | classes | F-EM iteration s | per 1e6 particles (extrapolated) | fit s |",
            "|---|---|---|---|---|---|",
            f"| {n} | {box} ({bw}) | {k} | {it:.1f} | {it * 1e6 / n / 3600:.2f} h | {total:.1f} |"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--target-resolution", type=float, default=None)
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--starts", type=int, default=None)
    ap.add_argument("--init", default=None)
    ap.add_argument("--particle-scale", default=None, choices=["optimal", "input", "none"])
    ap.add_argument("--scale", action="store_true", help="time one F-EM iteration of --n particles, --classes classes")
    ap.add_argument("--partition", type=int, default=2000)
    a = ap.parse_args()
    if a.scale:
        scale(a.n, a.box, a.classes, a.target_resolution, a.partition)
        return
    from sklearn.metrics import adjusted_rand_score

    from cryoframe import api
    from cryoframe.testing.states3d import write_state_store

    rows = []
    for seed in a.seeds:
        with tempfile.TemporaryDirectory() as td:
            d = Path(td)
            truth = write_state_store(d / "in.cf", a.n, a.box, a.classes, a.snr, seed)
            star = api.export(d / "in.cf", d / "in.star", format="star", images=True)
            t = time.perf_counter()
            out = api.class3d(d / "in.cf", d / "c3d.cf", classes=a.classes, iters=a.iters, seed=seed,
                              target_resolution_A=a.target_resolution, starts=a.starts, init=a.init,
                              scale=a.particle_scale, plots=False)
            wall = time.perf_counter() - t
            ari = adjusted_rand_score(truth["class"], out.table(["alignments3D/class"]).column(0).to_numpy())
            row = {"seed": seed, "cryoframe_s": wall, "cryoframe_ari": ari}
            if not a.no_relion:
                rec = api.reconstruct(d / "in.cf", d / "cons", seed=seed, plots=False)
                rw, rl = relion(Path(star), Path(rec["files"]["map"]), d / "relion", a.classes, a.iters,
                                0.8 * a.box * truth["psize_A"], seed)
                row.update(relion_s=rw, relion_ari=adjusted_rand_score(truth["class"], rl))
            rows.append(row)
            print(row, flush=True)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n## class3d vs relion_refine --skip_align ({now})", "",
             f"`{' '.join(sys.argv)}` on {machine()}; N={a.n}, box {a.box}, K={a.classes}, {a.iters} iterations, "
             f"SNR {a.snr}", "", "| seed | cryoframe s | cryoframe ARI | RELION s | RELION ARI |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['cryoframe_s']:.1f} | {r['cryoframe_ari']:.3f} | "
                     f"{r.get('relion_s', float('nan')):.1f} | {r.get('relion_ari', float('nan')):.3f} |")
    record(lines)


if __name__ == "__main__":
    main()
