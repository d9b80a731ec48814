"""RELION .star import/export: exact .star round trips, RELION 3.0 -> 3.1, .cs <-> .star conventions."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import DATA, make_star_project
from scipy.spatial.transform import Rotation

from cryoframe import api
from cryoframe.storage.convert import euler_to_rotvec, rotvec_to_euler


def relion_euler_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix (src/euler.cpp), written out from its documented formula."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ])


def test_rotvec_euler_matches_relion_matrix_convention() -> None:
    rng = np.random.default_rng(3)
    pose = Rotation.random(200, random_state=4).as_rotvec()
    ang = rotvec_to_euler(pose)
    for p, (rot, tilt, psi) in zip(pose, ang, strict=True):
        expected = Rotation.from_rotvec(p).as_matrix().T  # pyem/cryoDRGN: RELION matrix = R(rotvec)^T
        np.testing.assert_allclose(relion_euler_matrix(rot, tilt, psi), expected, atol=1e-9)
    assert np.all((ang[:, 1] >= 0) & (ang[:, 1] <= 180))
    back = euler_to_rotvec(ang)
    np.testing.assert_allclose(Rotation.from_rotvec(back).as_matrix(), Rotation.from_rotvec(pose).as_matrix(), atol=1e-9)
    del rng


def _store_from_star(p, tmp_path: Path, **kw):  # noqa: ANN001, ANN202
    return api.import_(p.star, tmp_path / "r.cf", project_dir=p.root, **kw)


def test_star31_store_star_equal_values(star_project, tmp_path: Path) -> None:
    s = _store_from_star(star_project, tmp_path)
    out = api.export(s, tmp_path / "back.star")
    a = starfile.read(star_project.star, always_dict=True)
    b = starfile.read(out, always_dict=True)
    pd.testing.assert_frame_equal(a["optics"], b["optics"])
    cols = list(a["particles"].columns)
    assert list(b["particles"].columns)[: len(cols)] == cols
    pd.testing.assert_frame_equal(a["particles"], b["particles"][cols])
    # the extra columns carry uid so a re-import joins
    assert "_uid" in b["particles"].columns
    s2 = api.import_(out, tmp_path / "r2.cf", metadata_only=True)
    np.testing.assert_array_equal(s2.table(["uid"]).column(0).to_numpy(), s.table(["uid"]).column(0).to_numpy())


def test_star_canonical_fields_follow_conventions(star_project, tmp_path: Path) -> None:
    s = _store_from_star(star_project, tmp_path)
    df = starfile.read(star_project.star)["particles"]
    t = s.table()
    pose = np.stack(t.column("alignments3D/pose").to_numpy(zero_copy_only=False))
    ang = df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(Rotation.from_rotvec(pose).as_matrix(),
                               Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix(), atol=2e-6)
    shift = np.stack(t.column("alignments3D/shift").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(shift * 1.2, df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(t.column("alignments3D/class").to_numpy(), df["rlnClassNumber"] - 1)
    np.testing.assert_array_equal(t.column("alignments3D/split").to_numpy(), df["rlnRandomSubset"] - 1)
    np.testing.assert_allclose(t.column("ctf/df_angle_rad").to_numpy(), np.deg2rad(df["rlnDefocusAngle"]), rtol=1e-6)
    np.testing.assert_array_equal(t.column("blob/idx").to_numpy(), [i for i in range(20)] * 2)
    amp = t.column("ctf/amp_contrast").to_numpy()
    np.testing.assert_allclose(amp, np.where(df["rlnOpticsGroup"] == 1, 0.1, 0.07), rtol=1e-6)
    assert s.optics().num_rows == 2


def test_star_images_equal_mrcfile(star_project, tmp_path: Path) -> None:
    s = _store_from_star(star_project, tmp_path)
    np.testing.assert_array_equal(s.images().compute(), star_project.images)
    a = mrcfile.read(star_project.root / "Extract/job007/Movies/b.mrcs")
    assert s.read_images(25, 26).tobytes() == a[5:6].tobytes()


def test_star_images_found_from_star_location(star_project, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(star_project.root)  # RELION paths are relative to the project directory
    s = api.import_("Refine3D/job010/run_data.star", tmp_path / "r.cf")
    assert s.has_images and s.n == 40


def test_relion30_converts_to_31(tmp_path: Path) -> None:
    p = make_star_project(tmp_path / "R30", version="3.0")
    s = api.import_(p.star, tmp_path / "r.cf", project_dir=p.root)
    assert s.manifest["source"]["relion_version"] == "3.0"
    out = api.export(s, tmp_path / "back.star")
    a = starfile.read(p.star)
    b = starfile.read(out, always_dict=True)
    opt, part = b["optics"], b["particles"]
    assert opt["rlnImagePixelSize"].tolist() == [pytest.approx(1.2)]
    assert opt["rlnVoltage"].tolist() == [300.0]
    np.testing.assert_allclose(part["rlnOriginXAngst"], a["rlnOriginX"] * 1.2, rtol=1e-6, atol=1e-6)
    for c in ("rlnOriginX", "rlnMagnification", "rlnDetectorPixelSize", "rlnVoltage"):
        assert c not in part.columns
    for c in ("rlnImageName", "rlnDefocusU", "rlnAngleRot", "rlnClassNumber", "rlnNormCorrection"):
        pd.testing.assert_series_equal(a[c], part[c])


@pytest.mark.parametrize("name", ["rln3.1_data_style.star", "one_loop.star"])
def test_real_starfile_test_files_roundtrip(name: str, tmp_path: Path) -> None:
    src = DATA / "starfile" / name
    s = api.import_(src, tmp_path / "s.cf", metadata_only=True)
    out = api.export(s, tmp_path / "s.star")
    blocks = starfile.read(src, always_dict=True)
    a = next(v for v in blocks.values() if "rlnImageName" in v.columns)
    b = starfile.read(out, always_dict=True)["particles"]
    for c in a.columns:
        if c in ("rlnMagnification", "rlnDetectorPixelSize"):  # RELION 3.0 -> 3.1 optics
            continue
        pd.testing.assert_series_equal(a[c], b[c], check_names=True)
    if name == "one_loop.star":
        assert starfile.read(out, always_dict=True)["optics"]["rlnImagePixelSize"].tolist() == [5.0]


def test_cs_star_cs_equal_within_float32(cs_project, tmp_path: Path) -> None:
    s = api.import_(cs_project.main, tmp_path / "j2.cf", passthrough=[cs_project.passthrough],
                    project_dir=cs_project.root)
    star = api.export(s, tmp_path / "j2.star")
    b = starfile.read(star, always_dict=True)
    part = b["particles"]
    assert "rlnImageName" in part.columns and "rlnOpticsGroup" in part.columns
    assert part["rlnImageName"].str.contains("@J1/imported/").all()
    assert not part["rlnImageName"].str.contains(">").any()
    src = np.load(cs_project.main)
    np.testing.assert_array_equal(part["rlnClassNumber"], src["alignments3D/class"] + 1)
    np.testing.assert_allclose(part["rlnOriginXAngst"], src["alignments3D/shift"][:, 0] * 1.5, rtol=1e-5, atol=1e-5)
    s2 = api.import_(star, tmp_path / "j2b.cf", project_dir=cs_project.root)
    np.testing.assert_array_equal(s2.images().compute(), s.images().compute())
    back = np.load(api.export(s2, tmp_path / "back.cs"))
    orig = np.load(api.export(s, tmp_path / "orig.cs"))
    for name in orig.dtype.names:
        a_, b_ = orig[name], back[name]
        if name == "alignments3D/pose":  # via Euler angles: same rotation within float32 precision
            np.testing.assert_allclose(Rotation.from_rotvec(b_).as_matrix(), Rotation.from_rotvec(a_).as_matrix(),
                                       atol=1e-5)
            continue
        if a_.dtype.kind == "S":
            np.testing.assert_array_equal(a_, b_, err_msg=name)
        else:
            assert b_.dtype == a_.dtype, name
            np.testing.assert_allclose(b_.astype(np.float64), a_.astype(np.float64), rtol=2e-7, atol=1e-6, err_msg=name)


def test_relion_only_export_has_only_relion_labels(cs_project, tmp_path: Path) -> None:
    s = api.import_(cs_project.main, tmp_path / "j2.cf", passthrough=[cs_project.passthrough], metadata_only=True)
    out = api.export(s, tmp_path / "r.star", extra_fields=False)
    b = starfile.read(out, always_dict=True)
    assert all(c.startswith("rln") for c in b["particles"].columns)
    assert all(c.startswith("rln") for c in b["optics"].columns)
    x = b["particles"]["rlnCoordinateX"].to_numpy()
    pt = np.load(cs_project.passthrough)
    ref = dict(zip(pt["uid"].tolist(), (pt["location/center_x_frac"] * 5760).tolist(), strict=True))
    uids = s.table(["uid"]).column(0).to_numpy()
    np.testing.assert_allclose(x, [ref[int(u)] for u in uids], rtol=1e-6)


def test_deterministic_uids_across_reimports(star_project, tmp_path: Path) -> None:
    a = api.import_(star_project.star, tmp_path / "a.cf", metadata_only=True)
    b = api.import_(star_project.star, tmp_path / "b.cf", metadata_only=True)
    ua = a.table(["uid"]).column(0).to_numpy()
    np.testing.assert_array_equal(ua, b.table(["uid"]).column(0).to_numpy())
    assert len(np.unique(ua)) == len(ua)


def test_relion_class2d_output_imports_as_2d_alignments(tmp_path: Path) -> None:
    """RELION 3.1's 2D classification _data.star (rlnAngleRot = rlnAngleTilt = 0) gives alignments2D:
    class 0-based, psi in rad, origins in px; exporting it again gives RELION's values back."""
    src = Path(__file__).parent / "data" / "relion31_class2d_it010_data.star"
    raw = starfile.read(src, always_dict=True)["particles"]
    s = api.import_(src, tmp_path / "r.cf", metadata_only=True)
    assert not any(f.startswith("alignments3D/") for f in s.fields)
    t = s.table(["alignments2D/class", "alignments2D/pose", "alignments2D/shift", "alignments2D/class_posterior"])
    np.testing.assert_array_equal(t.column(0).to_numpy(), raw["rlnClassNumber"].to_numpy() - 1)
    np.testing.assert_allclose(np.rad2deg(t.column(1).to_numpy()), raw["rlnAnglePsi"], atol=1e-4)
    shift = np.stack(t.column(2).to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(shift[:, 0] * 2.0, raw["rlnOriginXAngst"], atol=1e-4)  # 2 Å/px
    np.testing.assert_allclose(t.column(3).to_numpy(), raw["rlnMaxValueProbDistribution"], rtol=1e-6)
    back = starfile.read(api.export(s, tmp_path / "back.star"), always_dict=True)["particles"]
    for c in ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(back[c], raw[c], atol=1e-4)


def test_relion_origins_are_the_centring_shift() -> None:
    """Sign convention checked against a real peer: RELION 3.1 classified synthetic particles whose
    true centre displacement is known; its rlnOriginX/Y, imported as alignments2D/shift, recover the
    truth as the translation that centres the particle (and not with the opposite sign)."""
    from cryoframe.testing import make_truth, pose_recovery_errors

    raw = starfile.read(Path(__file__).parent / "data" / "relion31_class2d_it010_data.star",
                        always_dict=True)["particles"]
    assert len(raw) == 1000
    truth = make_truth(1000, 0, 0, "2d", 8)
    lab = raw["rlnClassNumber"].to_numpy() - 1
    psi = raw["rlnAnglePsi"].to_numpy()
    shift = np.c_[raw["rlnOriginXAngst"], raw["rlnOriginYAngst"]] / 2.0  # 2 Å/px
    ang_err, sh_err = pose_recovery_errors(lab, psi, shift, truth)
    assert ang_err < 4.0 and sh_err < 0.8, (ang_err, sh_err)
    assert pose_recovery_errors(lab, psi, -shift, truth)[1] > 2.0
    assert pose_recovery_errors(lab, -psi, shift, truth)[0] > 20.0  # psi keeps its sign too
