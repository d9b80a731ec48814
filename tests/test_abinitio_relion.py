"""Ab-initio reconstruction on particles RELION 3.1 wrote (tests/data/relion_3d, README_relion.md): the
200 CTF-modulated projections of ``relion_project``, their angles and origins removed, go through the
user's commands (import -> abinitio -> export .star), and the exported ``rlnAngle*`` and
``rlnOriginX/YAngst`` are compared with the ones RELION projected at, in RELION's own convention
(``euler_to_relion_matrix``).  Ab initio cannot know the map's orientation, position or hand, so the
comparison allows one global rotation and hand (``pose_errors``) and one 3D translation of the map
(each particle's origin moves by the translation's projection)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryoframe.algorithms.abinitio.evaluate import pose_errors
from cryoframe.cli import main as cli
from cryoframe.geometry import euler_to_relion_matrix

DATA = Path(__file__).parent / "data" / "relion_3d"


def _relion_matrices(p) -> np.ndarray:  # noqa: ANN001
    return euler_to_relion_matrix(p["rlnAngleRot"].to_numpy(), p["rlnAngleTilt"].to_numpy(),
                                  p["rlnAnglePsi"].to_numpy())


def _image_index(p) -> np.ndarray:  # noqa: ANN001
    return p["rlnImageName"].str.split("@").str[0].astype(int).to_numpy()


def _origin_residuals(a_est: np.ndarray, o_est: np.ndarray, o_true: np.ndarray) -> np.ndarray:
    """|origin differences| (Å) left after the best 3D translation ``t`` of the map: a particle's
    origin moves by the first two rows of its RELION matrix times ``t``."""
    m = a_est[:, :2, :].reshape(-1, 3)
    d = (o_est - o_true).reshape(-1)
    t, *_ = np.linalg.lstsq(m, d, rcond=None)
    return np.abs(d - m @ t)


@pytest.mark.slow
def test_abinitio_recovers_the_angles_and_origins_relion_projected_at(tmp_path: Path) -> None:
    truth = starfile.read(DATA / "proj_ctf.star", always_dict=True)
    p = truth["particles"]
    noposes = dict(truth)
    noposes["particles"] = p.drop(columns=[c for c in p.columns if c.startswith(("rlnAngle", "rlnOrigin"))])
    shutil.copy(DATA / "proj_ctf.mrcs", tmp_path / "proj_ctf.mrcs")
    starfile.write(noposes, tmp_path / "noposes.star", overwrite=True)
    assert cli(["-q", "import", str(tmp_path / "noposes.star"), "--out", str(tmp_path / "clean.cf")]) == 0
    # the command with the job's defaults (one class, seed 0): about 1.5 min on 2 cores
    assert cli(["-q", "abinitio", str(tmp_path / "clean.cf"), "--classes", "1", "--seed", "0", "--no-plots",
                "--out", str(tmp_path / "abinit.cf")]) == 0
    assert cli(["-q", "export", str(tmp_path / "abinit.cf"), "--format", "star",
                "--out", str(tmp_path / "abinit.star")]) == 0
    est = starfile.read(tmp_path / "abinit.star", always_dict=True)["particles"]
    assert len(est) == len(p)
    est = est.set_index(_image_index(est)).loc[_image_index(p)]  # RELION's particle order

    a_est, a_true = _relion_matrices(est), _relion_matrices(p)
    # pose matrices are the transposed RELION matrices (tests/test_geometry_relion.py)
    e = pose_errors(a_est.transpose(0, 2, 1), a_true.transpose(0, 2, 1))
    assert e["median_deg"] < 6.0 and e["within_10_deg"] >= 0.85, e
    # the same angles read as the transposed matrices (a convention slip in import or export) are far off
    wrong = pose_errors(a_est, a_true.transpose(0, 2, 1))
    assert wrong["median_deg"] > 30.0

    o_est = est[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    o_true = p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    res = _origin_residuals(a_est, o_est, o_true)
    assert np.median(res) < 0.5  # Å, pixels of 3 Å
    # a flipped origin sign leaves RELION's ±9 Å origins unexplained
    assert np.median(_origin_residuals(a_est, -o_est, o_true)) > 2.0
    assert set(est["rlnClassNumber"]) == {1}
