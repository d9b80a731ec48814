"""3D reconstruction benchmark: cryoframe ``reconstruct`` vs RELION 3.1 ``relion_reconstruct --ctf``.

For each box: a seeded chiral blob map (``cryoframe.testing.make_volumes``) is projected by
``cryoframe project`` at N uniformly random poses with shifts, per-particle CTF and white noise; the
store is exported as one ``.star`` + ``.mrcs`` (RELION 3.1 labels) and imported back, so both
programs reconstruct the same particles with the same known poses.  Timed (``time.perf_counter``
around each subprocess, process start to exit, run one after the other):

* ``cryoframe reconstruct STORE --out DIR --no-plots`` (half maps, map, FSC, FSC-weighted map;
  CPU, threads scheduler, both cores);
* ``relion_reconstruct --i particles.star --o relion.mrc --ctf --j 2`` (one map of all particles).

Accuracy vs the true map: resolution where FSC(map, truth) falls below 0.5 and the correlation with
the truth after a 10 Å low-pass inside a soft mask of the truth.  Appends to ``bench/RESULTS.md``.

    nice python bench/bench_reconstruct.py --box 64 --n 4000 [--box 128 --n 2000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "reconstruct"
sys.path.insert(0, str(HERE))
PSIZE = 2.0


def _timed(cmd: list[str], **kw: object) -> tuple[float, float]:
    """(wall s, CPU s of the child: user + system) of one subprocess, process start to exit."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[arg-type]
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _cli(*args: str) -> tuple[float, float]:
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return _timed([sys.executable, "-m", "cryoframe", "-q", *args], env=env)


def lowpass_masked_cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray, res_A: float) -> float:
    """Correlation of ``a`` and ``b`` after a hard low-pass at ``res_A``, weighted by ``mask``."""
    box = a.shape[0]
    k = np.fft.fftfreq(box) / PSIZE
    kx = np.fft.rfftfreq(box) / PSIZE
    keep = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) <= 1 / res_A**2

    def lp(x: np.ndarray) -> np.ndarray:
        return np.fft.irfftn(np.fft.rfftn(x) * keep, s=x.shape, axes=(0, 1, 2))

    la, lb = lp(a) * mask, lp(b) * mask
    la -= la.mean()
    lb -= lb.mean()
    return float((la * lb).sum() / np.sqrt((la * la).sum() * (lb * lb).sum()))


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The run with the least wall time (its CPU time with it)."""
    return min(runs)


def run(box: int, n: int, snr: float, seed: int, relion: bool, repeat: int = 1) -> dict[str, float]:
    from cryoframe import api
    from cryoframe.geometry.fsc import fsc, resolution_at
    from cryoframe.geometry.masks import threshold_mask
    from cryoframe.jobs._volumes import read_map, write_map
    from cryoframe.testing import make_volumes

    d = WORK / f"box{box}_n{n}"
    shutil.rmtree(d, ignore_errors=True)
    (d / "relion").mkdir(parents=True)
    truth = make_volumes(1, box, seed=seed)[0]
    write_map(d / "truth.mrc", truth, PSIZE)
    api.project(d / "truth.mrc", d / "proj.cf", n=n, ctf=True, snr=snr, max_shift_px=3.0, seed=seed)
    api.export(d / "proj.cf", d / "relion" / "particles.star", images=True)
    api.import_(d / "relion" / "particles.star", d / "particles.cf")
    have_relion = relion and shutil.which("relion_reconstruct") is not None
    runs_cf, runs_rel = [], []
    for _ in range(repeat):  # interleaved, so both programs see the same states of a shared machine
        runs_cf.append(_cli("reconstruct", str(d / "particles.cf"), "--out", str(d / "rec"), "--no-plots",
                            "--overwrite"))
        if have_relion:
            runs_rel.append(_timed(["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf",
                                    "--j", "2"], cwd=d / "relion"))
    t_cf, cpu_cf = _best(runs_cf)
    ours = read_map(d / "rec" / "map.mrc")[0]
    mask = threshold_mask(truth, 0.2 * float(truth.max()), 3, 5)
    out = {"cf_s": t_cf, "cf_cpu": cpu_cf, "cf_fsc05": resolution_at(fsc(ours, truth), box, PSIZE, 0.5),
           "cf_cc10": lowpass_masked_cc(ours, truth, mask, 10.0)}
    if have_relion:
        out["relion_s"], out["relion_cpu"] = _best(runs_rel)
        theirs = read_map(d / "relion" / "relion.mrc")[0]
        out["relion_fsc05"] = resolution_at(fsc(theirs, truth), box, PSIZE, 0.5)
        out["relion_cc10"] = lowpass_masked_cc(theirs, truth, mask, 10.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--box", type=int, nargs="+", default=[64])
    ap.add_argument("--n", type=int, nargs="+", default=[4000], help="particles per box (one per --box)")
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each program; the fastest of each is reported")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    a = ap.parse_args()
    from _common import machine, record

    rows = []
    for box, n in zip(a.box, a.n * len(a.box) if len(a.n) == 1 else a.n, strict=True):
        r = run(box, n, a.snr, a.seed, not a.no_relion, a.repeat)
        print(box, n, r, flush=True)

        def f(key: str, fmt: str = "{:.2f}", r: dict[str, float] = r) -> str:
            return fmt.format(r[key]) if key in r else "n/a"

        ratio = f"{r['relion_s'] / r['cf_s']:.2f}x" if "relion_s" in r else "n/a"
        rows.append(f"| {box} | {n} | {f('cf_s')} | {f('cf_cpu')} | {n / r['cf_s']:.0f} | {f('cf_fsc05')} | "
                    f"{f('cf_cc10', '{:.4f}')} | {f('relion_s')} | {f('relion_cpu')} | {f('relion_fsc05')} | "
                    f"{f('relion_cc10', '{:.4f}')} | {ratio} |")
    if a.no_record:
        return
    record([
        "", f"## 3D reconstruction (`bench/bench_reconstruct.py`), {date.today().isoformat()}", "",
        f"Machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f}. Synthetic chiral blob map, {PSIZE} Å/px; particles projected by `cryoframe project` "
        f"(random poses, shifts ±3 px, CTF 10000–25000 Å, SNR {a.snr}), exported to one .star + .mrcs and "
        "imported back; both programs reconstruct these particles with the known poses. Wall time = process "
        "start to exit: `cryoframe reconstruct STORE --out DIR --no-plots` (half maps, map, FSC, FSC-weighted "
        "map; CPU, threads) vs `relion_reconstruct --i particles.star --o relion.mrc --ctf --j 2` (RELION 3.1.3, "
        f"one map); CPU s = user + system time of the process; best of {a.repeat} run(s) of each, the two programs alternating. Accuracy vs the true map: resolution (Å) where FSC(map, truth) < 0.5; correlation with the "
        "truth after a 10 Å low-pass inside a soft mask of the truth.", "",
        "| box | N | cryoframe s | cryoframe CPU s | particles/s | FSC0.5 vs truth Å | cc 10 Å masked | RELION s "
        "| RELION CPU s | RELION FSC0.5 Å | RELION cc 10 Å | RELION/cryoframe wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "", f"Run: `python bench/bench_reconstruct.py {' '.join(sys.argv[1:])}`.",
    ])


if __name__ == "__main__":
    main()
