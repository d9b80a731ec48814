"""2D classification benchmark: accuracy on synthetic data with truth, and RELION 3.1 side by side.

For each SNR: a seeded synthetic store (K templates, box, N particles, CTF, noise) is classified by
``cryoframe class2d``; reported: adjusted Rand index vs the true classes, in-plane angle and shift
recovery (circular/px errors after aligning each class's frame to the truth), correlation of class
averages with the true templates (best over rotations), wall time.  With ``--relion`` the same
particles are exported (``.star`` + ``.mrcs``) and ``relion_refine`` (Debian package ``relion``,
installed with apt-get when missing) runs with the same K, T, iterations and sampling; its ARI,
pose errors and wall time are reported in the same table.  Appends to ``bench/RESULTS.md``.

Like for like: each ``--sampling`` runs BOTH programs at the same steps --
``coarse`` = ``--psi_step 10 --offset_range 5 --offset_step 2``, ``fine`` = ``--psi_step 6
--offset_range 5 --offset_step 1`` -- RELION with its default adaptive oversampling on (order 1, as
users run it), cryoframe at the same psi/offset steps.  Wall times are ``time.perf_counter`` around
each program (``relion_refine`` as a subprocess), never file times.  ``--reuse-relion`` reuses
only a run timed this way with the same command; a shorter timed run of the same command is
continued (``relion_refine --continue run_itNNN_optimiser.star`` repeating ``--iter``, ``--j``,
``--pool`` and ``--dont_combine_weights_via_disc``) and its segments' wall times are summed.

    python bench/bench_class2d.py --snr 0.05 0.02 --sampling coarse fine [--relion]

RELION 3.1 at ``fine`` sampling needs hours on 2 cores for 4000 particles x 25 iterations.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import starfile

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


def alignments(store: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, psi deg, shift px) of a store's alignments2D fields (shift: cryoSPARC/RELION convention)."""
    t = store.table(["alignments2D/class", "alignments2D/pose", "alignments2D/shift"])
    shift = np.stack(t.column(2).to_numpy(zero_copy_only=False)).astype(np.float64)
    return (t.column(0).to_numpy().astype(np.int64), np.rad2deg(t.column(1).to_numpy().astype(np.float64)),
            shift)


def relion_input(src: Path, star: Path) -> None:
    """Export the store's particles (.star + .mrcs) for RELION without their alignments: the synthetic
    metadata carry the true poses, shifts and classes, and RELION would start from them (it searches
    translations around the input origins)."""
    from cryoframe import api

    api.export(src, star, images=True, overwrite=True)
    blocks = starfile.read(star, always_dict=True)
    drop = {"rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnClassNumber", "rlnAngleRot", "rlnAngleTilt"}
    blocks["particles"] = blocks["particles"].drop(
        columns=[c for c in blocks["particles"].columns if c in drop or c.startswith("_")])
    starfile.write(blocks, star, overwrite=True)


def ensure_relion() -> str | None:
    exe = shutil.which("relion_refine")
    if exe:
        return exe
    r = subprocess.run("apt-get install -y -qq relion >/dev/null 2>&1 || "
                       "(apt-get update -qq && apt-get install -y -qq relion) >/dev/null 2>&1",
                       shell=True)
    return shutil.which("relion_refine") if r.returncode == 0 else None


SAMPLING = {"coarse": (10.0, 5.0, 2.0), "fine": (6.0, 5.0, 1.0)}  # psi step deg, offset range px, offset step px


def _timed(outdir: Path) -> list[tuple[float, int, str]]:
    """Recorded segments ``(seconds, iterations reached, command)`` of wall_s.txt (perf_counter times)."""
    f = outdir / "wall_s.txt"
    out = []
    for line in f.read_text().splitlines() if f.exists() else []:
        parts = line.split("\t")
        if len(parts) == 3:
            out.append((float(parts[0]), int(parts[1]), parts[2]))
    return out


def run_relion(exe: str, star: Path, outdir: Path, k: int, iters: int, tau: float, diameter: float,
               psi_step: float, offset_range: float, offset_step: float, threads: int,
               reuse: bool = False) -> tuple[float, Path]:
    """Wall seconds of ``relion_refine`` for ``iters`` iterations (sum of timed segments) and its data.star."""
    outdir.mkdir(parents=True, exist_ok=True)  # relion_refine needs the --o directory to exist
    common = ["--j", str(threads), "--pool", "30", "--dont_combine_weights_via_disc"]  # repeated on --continue
    base = [exe, "--i", str(star), "--o", str(outdir / "run"), "--K", str(k),
            "--tau2_fudge", str(tau), "--particle_diameter", str(diameter), "--psi_step", str(psi_step),
            "--offset_range", str(offset_range), "--offset_step", str(offset_step), "--oversampling", "1",
            "--ctf", "--zero_mask", "--flatten_solvent", "--norm", "--scale", "--random_seed", "0", *common]
    key = " ".join(base)
    segments = [t for t in _timed(outdir) if t[2] == key] if reuse else []
    if not reuse:
        (outdir / "wall_s.txt").unlink(missing_ok=True)
    final = outdir / f"run_it{iters:03d}_data.star"
    if final.exists() and any(n == iters for _, n, _ in segments):
        return sum(t for t, n, _ in segments if n <= iters), final
    segments = [t for t in segments if t[1] < iters]
    done = max((n for _, n, _ in segments), default=0)
    if done and not (outdir / f"run_it{done:03d}_optimiser.star").exists():
        segments, done = [], 0
    # keep only the segments this run builds on (none when starting afresh)
    (outdir / "wall_s.txt").write_text("".join(f"{t:.3f}\t{n}\t{c}\n" for t, n, c in segments))
    if done < iters:
        if done:
            cmd = [exe, "--continue", str(outdir / f"run_it{done:03d}_optimiser.star"), "--o", str(outdir / "run"),
                   "--iter", str(iters), *common]
        else:
            cmd = [*base, "--iter", str(iters)]
        t = time.perf_counter()
        with open(outdir / "relion.log", "a") as log:  # progress readable while it runs
            r = subprocess.run(cmd, cwd=star.parent, stdout=log, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"relion_refine failed: see {outdir / 'relion.log'}")
        with open(outdir / "wall_s.txt", "a") as f:
            f.write(f"{wall:.3f}\t{iters}\t{key}\n")
        segments.append((wall, iters, key))
    total = sum(t for t, n, _ in segments if n <= iters)
    return total, final


def main() -> None:  # noqa: C901, PLR0915
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--snr", type=float, nargs="+", default=[0.05, 0.02])
    ap.add_argument("--particles", type=int, default=4000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--T", type=float, default=2.0)
    ap.add_argument("--sampling", nargs="+", choices=sorted(SAMPLING), default=["coarse", "fine"],
                    help="coarse: psi 10 deg, offsets 5 px / 2 px; fine: psi 6 deg, offsets 5 px / 1 px (both programs)")
    ap.add_argument("--relion", action="store_true", help="also run RELION 3.1 relion_refine on the same data")
    ap.add_argument("--reuse-relion", action="store_true",
                    help="reuse a RELION run timed by this script with the same command (continued when it "
                         "has fewer iterations); never file times")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from _common import machine, record
    from sklearn.metrics import adjusted_rand_score

    from cryoframe import api
    from cryoframe.testing import make_templates, make_truth, pose_recovery_errors

    WORK.mkdir(parents=True, exist_ok=True)
    relion = ensure_relion() if args.relion else None
    if args.relion and relion is None:
        print("relion_refine not available; reporting cryoframe only")
    lines = [f"\n## 2D classification, same sampling (`bench/bench_class2d.py`), {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()}. Synthetic: {args.particles} particles, box {args.box}, K={args.classes} "
             f"templates, CTF, Gaussian noise; {args.iters} iterations, T={args.T}. Sampling per row, identical for "
             "both programs (RELION with its default oversampling 1). Wall: time.perf_counter around each program.\n",
             "Angle / shift: median error after removing each class's frame (`cryoframe.testing.pose_recovery_errors`).\n",
             "| SNR | sampling (psi / offset range / step) | cryoframe ARI | psi err deg | shift err px | s | s/iter | "
             "template corr | RELION 3.1 ARI | psi err deg | shift err px | RELION s | time ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for snr, sampling in ((x, y) for x in args.snr for y in args.sampling):
        psi_step, off_range, off_step = SAMPLING[sampling]
        tag = f"{args.particles}_{args.box}_{args.classes}_{snr}"
        src = WORK / f"toy_{tag}.cf"
        if not (src / "manifest.json").exists():
            api.synth(src, n=args.particles, box=args.box, classes=args.classes, snr=snr, seed=0, kind="2d",
                      overwrite=True)
        truth = np.load(src / "extras" / "truth.npz")["class"]
        tr = make_truth(args.particles, 0, 0, "2d", args.classes)
        assert np.array_equal(tr["class"], truth)
        r_row, r_msg = " n/a | n/a | n/a | n/a | n/a |", ""
        if relion:  # first, so that neither run shares the CPU with the other
            star = WORK / f"relion_{tag}_{sampling}" / "particles.star"
            star.parent.mkdir(parents=True, exist_ok=True)
            if not (args.reuse_relion and star.exists()):
                relion_input(src, star)
            psize = api.open_store(src).psize_A or 1.0
            r_wall, r_star = run_relion(relion, star, star.parent / "out", args.classes, args.iters, args.T,
                                        0.9 * args.box * psize, psi_step, off_range, off_step, 2, args.reuse_relion)
            r_store = api.import_(r_star, star.parent / "relion_result.cf", metadata_only=True, overwrite=True)
            r_lab, r_psi, r_shift = alignments(r_store)
            r_ari = adjusted_rand_score(truth, r_lab)
            r_ang, r_sh = pose_recovery_errors(r_lab, r_psi, r_shift, tr)
            r_msg = f"; RELION ARI {r_ari:.3f}, psi err {r_ang:.1f} deg, shift err {r_sh:.2f} px, {r_wall:.1f} s"
            print(f"snr={snr} {sampling}{r_msg}", flush=True)
        out = WORK / f"c2d_{tag}_{sampling}.cf"
        t = time.perf_counter()
        s = api.class2d(src, out, classes=args.classes, iters=args.iters, tau_fudge=args.T,
                        psi_step_deg=psi_step, offset_range_px=off_range, offset_step_px=off_step, seed=0,
                        overwrite=True, plots=False)
        wall = time.perf_counter() - t
        lab, psi, shift = alignments(s)
        ari = adjusted_rand_score(truth, lab)
        ang, sh = pose_recovery_errors(lab, psi, shift, tr)
        import zarr

        avgs = zarr.open_array(str(out / "extras" / "class_averages.zarr"), mode="r")[:]
        corr = template_correlation(avgs, make_templates(args.classes, args.box, 0))
        row = f"| {snr} | {sampling} ({psi_step:g} / {off_range:g} / {off_step:g}) | {ari:.3f} | {ang:.1f} | {sh:.2f} | {wall:.1f} | {wall / args.iters:.2f} | {corr:.3f} |"
        msg = (f"snr={snr} {sampling}: cryoframe ARI {ari:.3f}, psi err {ang:.1f} deg, shift err {sh:.2f} px, {wall:.1f} s, "
               f"template correlation {corr:.3f}")
        if relion:
            row += f" {r_ari:.3f} | {r_ang:.1f} | {r_sh:.2f} | {r_wall:.1f} | {r_wall / wall:.1f}x |"
            msg += f"{r_msg} -> cryoframe {r_wall / wall:.1f}x faster"
        else:
            row += r_row
        print(msg, flush=True)
        lines.append(row)
    lines.append(f"\nCommand: `python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
