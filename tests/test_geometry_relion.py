"""Conventions pinned by RELION 3.1 itself (fixtures in tests/data/relion_3d, see README_relion.md):
projections, shifts, CTF (with phase shift), hand, reconstruction and masks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoframe import api
from cryoframe.geometry import euler_to_relion_matrix, pose_matrix, pose_to_euler
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.ctf import ctf_grid
from cryoframe.geometry.masks import threshold_mask
from cryoframe.jobs._volumes import particle_geometry

DATA = Path(__file__).parent / "data" / "relion_3d"


def _read(name: str) -> np.ndarray:
    with mrcfile.open(DATA / name, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float64)


def _cc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


@pytest.fixture(scope="module")
def relion_ctf(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("relion3d")
    return api.import_(DATA / "proj_ctf.star", d / "ctf.cf")


@pytest.fixture(scope="module")
def relion_noctf(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("relion3d_noctf")
    return api.import_(DATA / "proj_noctf.star", d / "noctf.cf")


def _project(store, vol: np.ndarray, ctf: bool, *, flip_shift: bool = False, transpose: bool = False) -> np.ndarray:  # noqa: ANN001
    g = particle_geometry(store, ctf=ctf)
    rot = g["rot"].transpose(0, 2, 1) if transpose else g["rot"]
    shifts = -g["shifts_px"] if flip_shift else g["shifts_px"]
    f = fo.extract_slices(fo.volume_transform(vol), rot, g["box"])
    if ctf:
        f = f * ctf_grid(g["box"], g["psize_A"], g["ctf"])
    f = f * fo.phase_shift(g["box"], -shifts)
    return fo.icfft2(f, g["box"])


def test_relion_euler_matrix_is_transposed_pose_matrix(relion_ctf) -> None:  # noqa: ANN001
    import starfile

    df = starfile.read(DATA / "proj_ctf.star")["particles"]
    a = euler_to_relion_matrix(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
    g = particle_geometry(relion_ctf, ctf=False)
    np.testing.assert_allclose(a, g["rot"].transpose(0, 2, 1), atol=1e-5)
    e = pose_to_euler(g["pose"])
    np.testing.assert_allclose(pose_matrix(g["pose"]), euler_to_relion_matrix(*e.T).transpose(0, 2, 1), atol=1e-9)


def test_projection_matches_relion_project_with_ctf_shifts_phase_shift(relion_ctf, tmp_path: Path) -> None:  # noqa: ANN001
    out = api.project(DATA / "truth.mrc", tmp_path / "p.cf", poses=relion_ctf, ctf=True)
    ours = out.read_images(0, out.n)
    theirs = relion_ctf.read_images(0, relion_ctf.n)
    cc = _cc(ours, theirs)
    assert cc.min() >= 0.99, cc.min()
    scale = float((ours * theirs).sum() / (ours * ours).sum())
    assert abs(scale - 1.0) < 0.01  # same amplitude scale as RELION (no hidden normalisation)


def test_projection_matches_relion_project_without_ctf(relion_noctf, tmp_path: Path) -> None:  # noqa: ANN001
    out = api.project(DATA / "truth.mrc", tmp_path / "p.cf", poses=relion_noctf, ctf=False)
    assert _cc(out.read_images(0, out.n), relion_noctf.read_images(0, relion_noctf.n)).min() >= 0.99


@pytest.mark.parametrize("wrong", ["mirror", "negated_shifts", "transposed_rotations", "no_ctf"])
def test_wrong_conventions_are_caught(relion_ctf, wrong: str) -> None:  # noqa: ANN001
    vol = _read("truth.mrc")
    theirs = relion_ctf.read_images(0, relion_ctf.n)
    right = _cc(_project(relion_ctf, vol, True), theirs)
    assert right.min() >= 0.99
    if wrong == "mirror":
        bad = _project(relion_ctf, vol[::-1].copy(), True)  # the other hand: z -> -z
    elif wrong == "negated_shifts":
        bad = _project(relion_ctf, vol, True, flip_shift=True)
    elif wrong == "transposed_rotations":
        bad = _project(relion_ctf, vol, True, transpose=True)
    else:
        bad = _project(relion_ctf, vol, False)
    cc = _cc(bad, theirs)
    assert np.median(cc) < 0.9, np.median(cc)


def test_reconstruction_at_least_as_close_to_truth_as_relion_reconstruct(relion_ctf, tmp_path: Path) -> None:  # noqa: ANN001
    truth = _read("truth.mrc")
    theirs = _read("relion_rec.mrc")
    s = api.reconstruct(relion_ctf, tmp_path / "rec", plots=False)
    with mrcfile.open(s["files"]["map"]) as m:
        ours = np.asarray(m.data, dtype=np.float64)
        assert m.voxel_size.x == pytest.approx(3.0)
    mask = threshold_mask(truth, 0.1, 2, 3) > 0
    cc_ours = _cc(ours[mask][None], truth[mask][None])[0]
    cc_theirs = _cc(theirs[mask][None], truth[mask][None])[0]
    assert cc_ours >= cc_theirs - 1e-3, (cc_ours, cc_theirs)
    assert cc_ours > 0.98
    # and on RELION's scale: the map's amplitude matches the truth's within 5 %
    assert float((ours * truth).sum() / (truth * truth).sum()) == pytest.approx(1.0, abs=0.05)


def test_mask_matches_relion_mask_create(tmp_path: Path) -> None:
    ref = _read("relion_mask.mrc")
    api.mask(DATA / "truth.mrc", tmp_path / "m.mrc", threshold=0.5, extend_px=2, soft_edge_px=4)
    with mrcfile.open(tmp_path / "m.mrc") as m:
        ours = np.asarray(m.data, dtype=np.float64)
        assert m.voxel_size.x == pytest.approx(3.0)
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.skipif(shutil.which("relion_project") is None, reason="RELION not installed")
def test_live_relion_project_single_view(tmp_path: Path) -> None:
    """With RELION installed: one more projection at an arbitrary view, run live."""
    shutil.copy(DATA / "truth.mrc", tmp_path / "truth.mrc")
    subprocess.run(["relion_project", "--i", "truth.mrc", "--o", "one.mrc", "--rot", "33", "--tilt", "71", "--psi", "-48",
                    "--xoff", "2", "--yoff", "-1.5", "--angpix", "3.0"], cwd=tmp_path, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = [tmp_path / "one.mrc"]
    with mrcfile.open(out[0], permissive=True) as m:
        theirs = np.asarray(m.data, dtype=np.float64).reshape(1, 32, 32)
    from cryoframe.geometry import euler_to_pose

    rot = pose_matrix(euler_to_pose(np.array([[33.0, 71.0, -48.0]])))
    f = fo.extract_slices(fo.volume_transform(_read("truth.mrc")), rot, 32) * fo.phase_shift(32, -np.array([[2.0, -1.5]]))
    assert _cc(fo.icfft2(f, 32), theirs)[0] >= 0.99
