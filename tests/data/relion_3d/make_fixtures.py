"""Regenerate the RELION 3.1 fixtures in this folder (needs the Debian ``relion`` package).

    cd tests/data/relion_3d && PYTHONPATH=../../../src python make_fixtures.py

Writes truth.mrc (a chiral blob map, box 32, 3 Å/px), poses.star (200 particles: all three Euler
angles, origins, per-particle astigmatic defocus and phase shift), then runs the RELION commands
listed in ../../README_relion.md (also printed).  Only the outputs named there are kept.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

from cryoframe.jobs._volumes import write_map
from cryoframe.testing import make_volumes

BOX, PSIZE, N, N_NOCTF = 32, 3.0, 200, 20
HERE = Path(__file__).parent

COMMANDS = [
    "relion_project --i truth.mrc --o proj_ctf --ang poses.star --ctf --angpix 3.0",
    "relion_project --i truth.mrc --o proj_noctf --ang poses_noctf.star --angpix 3.0",
    "relion_reconstruct --i proj_ctf.star --o relion_rec.mrc --ctf --angpix 3.0",
    "relion_mask_create --i truth.mrc --o relion_mask.mrc --ini_threshold 0.5 --extend_inimask 2 --width_soft_edge 4 --angpix 3.0",
]


def main() -> None:
    vol = make_volumes(1, BOX, seed=7)[0]
    vol = vol / vol.max() * 2.0
    write_map(HERE / "truth.mrc", vol, PSIZE)
    rng = np.random.default_rng(2026)
    rot = Rotation.random(N, random_state=rng)
    with np.errstate(all="ignore"):
        ang = rot.as_euler("ZYZ", degrees=True)
    df = rng.uniform(8000, 22000, N)
    parts = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@dummy.mrcs" for i in range(N)],
        "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
        "rlnOriginXAngst": rng.uniform(-9, 9, N), "rlnOriginYAngst": rng.uniform(-9, 9, N),
        "rlnDefocusU": df + rng.uniform(0, 800, N), "rlnDefocusV": df,
        "rlnDefocusAngle": rng.uniform(-180, 180, N), "rlnPhaseShift": rng.uniform(0, 40, N),
        "rlnOpticsGroup": 1,
    })
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [PSIZE], "rlnImageSize": [BOX], "rlnImageDimensionality": [2]})
    starfile.write({"optics": optics, "particles": parts}, HERE / "poses.star", overwrite=True)
    starfile.write({"optics": optics, "particles": parts.iloc[:N_NOCTF]}, HERE / "poses_noctf.star", overwrite=True)
    for c in COMMANDS:
        print("$", c, flush=True)
        subprocess.run(c.split(), cwd=HERE, check=True, stdout=subprocess.DEVNULL)
    for junk in HERE.glob("*_sampling.star"):
        junk.unlink()
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
