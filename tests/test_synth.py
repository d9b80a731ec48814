"""The synthetic-data generator: determinism, physics conventions, known statistics, written files."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryoframe.schema import field_spec
from cryoframe.synthetic.physics import blob_model, project_blobs, render_blobs, rot2d
from cryoframe.testing import (
    BLOCK,
    MIXTURES,
    OPTICS,
    ctf_2d,
    ctf_at,
    electron_wavelength_A,
    is_main_field,
    make_metadata,
    make_particles,
    make_templates,
    make_truth,
    make_volumes,
    project,
    synth_store,
    write_cs_dataset,
    write_star_dataset,
)

BOX = 32


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# -- determinism -----------------------------------------------------------------------------------
def test_same_seed_gives_identical_output_and_other_seed_differs() -> None:
    a, ta = make_particles(20, BOX, classes=4, kind="3d", seed=3)
    b, tb = make_particles(20, BOX, classes=4, kind="3d", seed=3)
    c, _ = make_particles(20, BOX, classes=4, kind="3d", seed=4)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    for k in ta:
        assert np.array_equal(ta[k], tb[k])
    m1, m2, m3 = make_metadata(50, seed=3), make_metadata(50, seed=3), make_metadata(50, seed=4)
    assert all(np.array_equal(m1[k], m2[k]) for k in m1)
    assert not np.array_equal(m1["uid"], m3["uid"]) and not np.array_equal(m1["ctf/df1_A"], m3["ctf/df1_A"])


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_batched_generation_equals_one_shot(kind: str) -> None:
    start = BLOCK - 70  # crosses a parameter block and several noise blocks
    one, t_one = make_particles(150, BOX, classes=3, kind=kind, seed=1, batch_start=start)
    parts = [make_particles(m, BOX, classes=3, kind=kind, seed=1, batch_start=start + s) for s, m in
             ((0, 33), (33, 37), (70, 80))]
    assert np.array_equal(one, np.concatenate([p[0] for p in parts]))
    for k in ("class", "pose", "shift", "df1_A", "scale"):
        assert np.array_equal(t_one[k], np.concatenate([p[1][k] for p in parts]))
    md = make_metadata(3 * BLOCK, seed=2, kind=kind, classes=3)
    chunks = [make_metadata(m, seed=2, start=s, kind=kind, classes=3) for s, m in ((0, 1000), (1000, 7000),
                                                                                    (8000, 3 * BLOCK - 8000))]
    for k, v in md.items():
        assert np.array_equal(v, np.concatenate([c[k] for c in chunks])), k


def test_images_and_metadata_describe_the_same_particles() -> None:
    _, t = make_particles(40, BOX, classes=4, kind="3d", seed=5, batch_start=10)
    md = make_metadata(40, seed=5, start=10, kind="3d", classes=4, box=BOX)
    assert np.allclose(md["alignments3D/pose"], t["pose"], atol=1e-6)
    assert np.allclose(md["alignments3D/shift"], -t["shift"], atol=1e-6)  # the shift that centres the particle
    assert np.allclose(md["ctf/df1_A"], t["df1_A"], rtol=1e-6)
    assert np.allclose(md["alignments3D/alpha_min"], t["scale"], rtol=1e-6)
    assert np.array_equal(md["ctf/exp_group_id"], t["defocus_group"] + 1)


def _mixture_cdf(spec: dict, x: float) -> float:
    from scipy.stats import norm

    return float(sum(w * norm.cdf(x, m, sd) for w, m, sd in zip(spec["weights"], spec["means"], spec["sds"], strict=True)))


# -- metadata: uids, dtypes, known statistics ------------------------------------------------------
def test_uids_are_unique_uint64_over_the_full_range() -> None:
    md = make_metadata(60_000, seed=0)
    uid = md["uid"]
    assert uid.dtype == np.dtype("<u8")
    assert len(np.unique(uid)) == len(uid)
    assert (uid > np.uint64(2**63)).any() and (uid < np.uint64(2**62)).any()
    assert len(np.unique(md["location/micrograph_uid"])) == 60_000 // 200


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_metadata_dtypes_match_the_field_dictionary(kind: str) -> None:
    md = make_metadata(10, kind=kind, classes=5)
    for name, v in md.items():
        spec = field_spec(name)
        assert spec is not None, name
        want = np.dtype(spec.dtype)
        assert v.dtype.kind == want.kind and (want.kind == "S" or v.dtype == want), (name, v.dtype, spec.dtype)
        if spec.shape:
            assert v.shape[1:] == spec.shape, name
    assert md["alignments3D_multi/class_posterior"].shape == (10, 5)
    assert np.allclose(md["alignments3D_multi/class_posterior"].sum(1), 1.0, atol=1e-5)
    assert md["blob/path"][0] == b"J1/imported/particles_000000.mrcs"


def test_statistics_follow_the_recorded_mixtures() -> None:
    n = 20_000
    md = make_metadata(n, seed=11, kind="3d", classes=4)
    t = make_truth(n, seed=11, kind="3d", classes=4)
    junk = t["junk"]
    assert abs(junk.mean() - MIXTURES["junk_fraction"]) < 0.015
    for name, field in (("scale", "alignments3D/alpha_min"), ("error3d", "alignments3D/error"),
                        ("error2d", "alignments2D/error"), ("ncc", "pick_stats/ncc_score"),
                        ("power", "pick_stats/power")):
        spec, v = MIXTURES[name], md[field].astype(np.float64)
        for cut in spec["means"] + [np.mean(spec["means"])]:  # the mixture's CDF
            assert abs((v < cut).mean() - _mixture_cdf(spec, cut)) < 0.015, name
        jc = spec["junk_component"]
        assert abs(v[junk].mean() - spec["means"][jc]) < 0.05 * spec["sds"][jc], name
        assert abs(v[junk].std() - spec["sds"][jc]) < 0.05 * spec["sds"][jc], name
    df = MIXTURES["defocus"]
    avg = (md["ctf/df1_A"].astype(np.float64) + md["ctf/df2_A"]) / 2
    assert abs((avg < np.mean(df["means"])).mean() - _mixture_cdf(df, np.mean(df["means"]))) < 0.015
    assert avg.min() >= df["range"][0] - 0.01 and avg.max() <= df["range"][1] + 0.01  # float32
    g = md["ctf/exp_group_id"] == 1
    assert abs(avg[g].mean() - df["means"][0]) < 50 and abs(avg[~g].std() - df["sds"][1]) < 60
    assert np.all(md["ctf/df1_A"] >= md["ctf/df2_A"])
    shift = md["alignments3D/shift"]
    assert np.abs(shift).max() <= MIXTURES["shift_px"]["max"] and abs(shift.std() - 1.5) < 0.05
    # posteriors concentrate on the true class, much more for good particles
    right = md["alignments3D/class"] == t["class"]
    assert right[~junk].mean() > 0.97 and right[junk].mean() < right[~junk].mean()
    assert md["alignments3D/class_posterior"][~junk].mean() > md["alignments3D/class_posterior"][junk].mean() + 0.2
    assert np.allclose(md["alignments3D/class_ess"], 1 / (md["alignments3D_multi/class_posterior"] ** 2).sum(1), rtol=1e-4)
    assert abs(md["alignments3D/split"].mean() - 0.5) < 0.02
    # 3D poses are uniform rotations: the viewing direction's z is uniform on [-1, 1]
    zdir = Rotation.from_rotvec(md["alignments3D/pose"]).as_matrix()[:, 2, 2]
    assert abs(zdir.mean()) < 0.03 and abs((np.abs(zdir) < 0.5).mean() - 0.5) < 0.02


# -- physics ---------------------------------------------------------------------------------------
def test_ctf_is_amplitude_contrast_at_zero_frequency_relion_sign() -> None:
    df1 = np.array([8000.0, 15000.0, 25000.0])
    h = ctf_2d(64, 1.5, df1, df1 - 300, [0.1, 1.0, 2.0], 300, 2.7, 0.1)
    assert h.shape == (3, 64, 33) and h.dtype == np.float32
    assert np.allclose(h[:, 0, 0], 0.1, atol=1e-7)
    full = ctf_2d(64, 1.5, 15000.0, 14700.0, 1.0, 300, 2.7, 0.07, rfft=False)
    assert full.shape == (64, 64) and np.isclose(full[0, 0], 0.07)
    assert np.allclose(full[:, :32], ctf_2d(64, 1.5, 15000.0, 14700.0, 1.0, 300, 2.7, 0.07)[:, :32])  # Nyquist sign differs
    k = np.r_[1:32, 33:64]  # Friedel symmetric away from Nyquist: H(-s) = H(s)
    assert np.allclose(full[np.ix_(k, k)], full[np.ix_(64 - k, 64 - k)], atol=1e-6)


def test_ctf_first_zero_is_at_the_analytic_frequency() -> None:
    lam = float(electron_wavelength_A(300))
    assert abs(lam - 0.019687) < 2e-6
    a, cs = 0.1, 2.7e7
    for df1, df2, ang in ((20000.0, 20000.0, 0.0), (20000.0, 16000.0, 0.6)):
        for d, theta in ((df1, ang), (df2, ang + np.pi / 2)):  # df1 along the angle, df2 across it
            # chi(s) = pi lam d s^2 - pi/2 Cs lam^3 s^4 = pi - asin(A) at the first zero
            qa, qb, qc = 0.5 * np.pi * cs * lam**3, -np.pi * lam * d, np.pi - np.arcsin(a)
            s0 = np.sqrt((-qb - np.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa))
            sx, sy = s0 * np.cos(theta), s0 * np.sin(theta)
            args = (df1, df2, ang, 300.0, 2.7, a)
            assert abs(ctf_at(sx, sy, *args)) < 1e-9
            before, after = ctf_at(0.99 * sx, 0.99 * sy, *args), ctf_at(1.01 * sx, 1.01 * sy, *args)
            assert before > 0 > after
            assert np.all(ctf_at(np.linspace(0, 0.98, 50) * sx, np.linspace(0, 0.98, 50) * sy, *args) > 0)


def test_real_space_projection_matches_the_analytic_blob_images() -> None:
    vols = make_volumes(2, BOX, seed=2)
    assert vols.shape == (2, BOX, BOX, BOX) and np.allclose(np.sqrt((vols**2).mean((1, 2, 3))), 1, atol=0.02)
    rots = Rotation.random(3, random_state=4).as_matrix()
    c, p, a = blob_model(2, BOX, 2, 3)
    for j in range(2):
        proj = project(vols[j], rots, order=3)
        cc, pp, aa = project_blobs(np.repeat(c[j][None], 3, 0), np.repeat(p[j][None], 3, 0),
                                   np.repeat(a[j][None], 3, 0), rots)
        exact = render_blobs(cc, pp, aa, BOX)
        assert np.abs(proj - exact).max() < 0.005 * np.abs(exact).max()


def test_3d_particles_are_shifted_scaled_projections() -> None:
    img, t = make_particles(4, BOX, classes=2, snr=np.inf, kind="3d", seed=2, ctf=False)
    vols = make_volumes(2, BOX, seed=2)
    for i in range(4):
        ref = project(vols[t["class"][i]], Rotation.from_rotvec(t["pose"][i]).as_matrix(), order=3)
        ref = t["scale"][i] * ndimage.shift(ref, (t["shift"][i, 1], t["shift"][i, 0]), order=3)
        assert np.abs(img[i] - ref).max() < 0.02 * np.abs(ref).max()


def test_2d_particles_are_rotated_shifted_templates_and_templates_are_distinct() -> None:
    tpl = make_templates(6, BOX, seed=7)
    assert tpl.shape == (6, BOX, BOX) and np.allclose(np.sqrt((tpl**2).mean((1, 2))), 1, atol=1e-3)
    for i in range(6):  # no template is a rotated copy of another
        for j in range(i):
            worst = max(_corr(ndimage.rotate(tpl[i], ang, reshape=False), tpl[j]) for ang in range(0, 360, 10))
            assert worst < 0.9
    img, t = make_particles(5, BOX, classes=6, snr=np.inf, kind="2d", seed=7, ctf=False)
    g = np.arange(BOX) - BOX // 2
    y, x = np.meshgrid(g, g, indexing="ij")
    for i in range(5):  # I(p) = scale * T(R(theta) (p - shift))
        r = rot2d(t["pose"][i])
        px, py = x - t["shift"][i, 0], y - t["shift"][i, 1]
        qx, qy = r[0, 0] * px + r[0, 1] * py, r[1, 0] * px + r[1, 1] * py
        ref = t["scale"][i] * ndimage.map_coordinates(tpl[t["class"][i]], [qy + BOX // 2, qx + BOX // 2], order=3)
        assert np.abs(img[i] - ref).max() < 0.02 * np.abs(ref).max()


def test_snr_is_realised_and_noise_has_unit_variance() -> None:
    for kind in ("2d", "3d"):
        img, t = make_particles(256, BOX, classes=4, snr=0.1, kind=kind, seed=9, return_clean=True)
        noise = img - t["clean"]
        realised = t["clean"].var(axis=(1, 2)).mean() / noise.var(axis=(1, 2)).mean()
        assert abs(realised / 0.1 - 1) < 0.2
        assert abs(noise.std() - 1) < 0.01 and abs(noise.mean()) < 0.01


# -- written files ---------------------------------------------------------------------------------
def test_write_cs_dataset_loads_with_numpy_and_cryosparc_tools(tmp_path: Path) -> None:
    from cryosparc.dataset import Dataset

    ds = write_cs_dataset(tmp_path / "P", 230, box=BOX, classes=3, kind="3d", seed=4, stack_size=100, batch_size=64)
    assert [p.name for p in ds.stacks] == ["particles_000.mrcs", "particles_001.mrcs", "particles_002.mrcs"]
    main = np.load(ds.particles)
    pt = np.load(ds.passthrough)
    ref = make_metadata(230, seed=4, kind="3d", classes=3, box=BOX, stack_size=100,
                        blob_path="J1/imported/particles_{:03d}.mrcs")
    assert set(main.dtype.names) == {k for k in ref if is_main_field(k)}
    assert set(pt.dtype.names) == {k for k in ref if not is_main_field(k)} | {"uid"}
    for k in main.dtype.names:
        assert np.array_equal(main[k], ref[k]) and main[k].dtype == ref[k].dtype, k
    assert set(pt["uid"].tolist()) == set(main["uid"].tolist()) and not np.array_equal(pt["uid"], main["uid"])
    pos = {u: i for i, u in enumerate(pt["uid"].tolist())}
    order = np.array([pos[u] for u in main["uid"].tolist()])
    for k in pt.dtype.names:
        assert np.array_equal(pt[k][order], ref[k]), k
    for path, rec in ((ds.particles, main), (ds.passthrough, pt)):
        d = Dataset.load(str(path))
        assert list(d.fields()) == list(rec.dtype.names)
        for k in rec.dtype.names:
            got = np.asarray(d[k])
            want = rec[k] if rec[k].dtype.kind != "S" else np.char.decode(rec[k]).astype(object)
            assert np.array_equal(got, want), k
    imgs, _ = make_particles(230, BOX, classes=3, kind="3d", seed=4)
    for i in (0, 99, 100, 229):
        path = ds.directory / main["blob/path"][i].decode()
        with mrcfile.mmap(path, mode="r") as m:
            assert m.data.dtype == np.float32 and np.isclose(m.voxel_size.x, 2.0)
            assert np.array_equal(m.data[main["blob/idx"][i]], imgs[i])
    assert json.dumps(ds.truth)  # JSON-able record of the mixtures
    assert np.array_equal(ds.labels(10, 20)["class"], make_truth(10, 4, 10, "3d", 3)["class"])


def test_metadata_only_cs_without_passthrough_holds_every_field(tmp_path: Path) -> None:
    ds = write_cs_dataset(tmp_path / "M", 3000, box=BOX, seed=1, images=False, passthrough=False, batch_size=700)
    rec = np.load(ds.particles)
    ref = make_metadata(3000, seed=1, box=BOX, blob_path="J1/imported/particles_{:03d}.mrcs")
    assert ds.stacks == [] and ds.passthrough is None and not (tmp_path / "M" / "J1").exists()
    assert list(rec.dtype.names) == list(ref)
    assert all(np.array_equal(rec[k], ref[k]) for k in ref)


@pytest.mark.parametrize("version", ["3.1", "3.0"])
def test_write_star_dataset_reads_back_with_starfile(tmp_path: Path, version: str) -> None:
    ds = write_star_dataset(tmp_path / "R", 120, box=BOX, classes=3, kind="3d", seed=6, relion_version=version,
                            stack_size=50)
    blocks = starfile.read(ds.particles, always_dict=True)
    md = make_metadata(120, seed=6, kind="3d", classes=3, box=BOX)
    if version == "3.1":
        assert set(blocks) == {"optics", "particles"}
        optics, df = blocks["optics"], blocks["particles"]
        assert sorted(optics["rlnOpticsGroup"]) == sorted(set(df["rlnOpticsGroup"])) == [1, 2]
        assert np.allclose(optics["rlnImagePixelSize"], 2.0) and (optics["rlnImageSize"] == BOX).all()
        assert np.allclose(optics["rlnVoltage"], 300) and np.allclose(optics["rlnAmplitudeContrast"], 0.1)
        origin = np.stack([df["rlnOriginXAngst"], df["rlnOriginYAngst"]], 1) / 2.0
    else:
        assert len(blocks) == 1
        df = next(iter(blocks.values()))
        assert np.allclose(df["rlnDetectorPixelSize"] * 1e4 / df["rlnMagnification"], 2.0)
        assert np.allclose(df["rlnVoltage"], OPTICS["accel_kv"])
        origin = np.stack([df["rlnOriginX"], df["rlnOriginY"]], 1)
    assert df["rlnImageName"].iloc[0] == "000001@Particles/stack_000.mrcs"
    assert df["rlnImageName"].iloc[50] == "000001@Particles/stack_001.mrcs"
    assert np.allclose(origin, md["alignments3D/shift"], atol=1e-5)
    eul = df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    r_star = Rotation.from_euler("ZYZ", eul, degrees=True)
    r_cs = Rotation.from_rotvec(md["alignments3D/pose"].astype(np.float64))
    assert np.degrees((r_star.inv() * r_cs).magnitude()).max() < 1e-3
    assert np.array_equal(df["rlnClassNumber"], md["alignments3D/class"] + 1)
    assert set(df["rlnRandomSubset"]) == {1, 2}
    assert np.allclose(df["rlnDefocusU"], md["ctf/df1_A"], atol=1e-3)
    assert np.allclose(df["rlnDefocusAngle"], np.degrees(md["ctf/df_angle_rad"]), atol=1e-4)
    imgs, _ = make_particles(120, BOX, classes=3, kind="3d", seed=6)
    for i in (0, 77, 119):
        num, rel = df["rlnImageName"].iloc[i].split("@")
        with mrcfile.mmap(ds.directory / rel, mode="r") as m:
            assert np.array_equal(m.data[int(num) - 1], imgs[i])


def test_2d_star_dataset_has_psi_only(tmp_path: Path) -> None:
    ds = write_star_dataset(tmp_path / "R2", 30, box=BOX, classes=3, kind="2d", seed=1, images=False)
    df = starfile.read(ds.particles, always_dict=True)["particles"]
    md = make_metadata(30, seed=1, kind="2d", classes=3, box=BOX)
    assert "rlnAngleRot" not in df.columns
    assert np.allclose(np.radians(df["rlnAnglePsi"]), md["alignments2D/pose"], atol=1e-5)
    assert np.array_equal(df["rlnClassNumber"], md["alignments2D/class"] + 1)


def test_synth_store_opens_with_n_rows_images_and_truth(tmp_path: Path) -> None:
    from cryoframe.storage.store import IMAGE_ROW, ParticleStore

    s = synth_store(tmp_path / "s.cf", 300, box=BOX, classes=3, snr=0.05, seed=2, kind="2d", batch_size=128)
    s = ParticleStore(s.path)
    assert s.n == len(s) == 300 and s.box == BOX and s.psize_A == 2.0
    assert s.lineage[-1]["op"] == "synth"
    md = make_metadata(300, seed=2, kind="2d", classes=3, box=BOX)
    tab = s.table()
    assert np.array_equal(tab.column("uid").to_numpy(), md["uid"])
    assert np.array_equal(tab.column(IMAGE_ROW).to_numpy(), np.arange(300))
    assert "blob/path" not in s.fields and "alignments3D_multi/class_posterior" in s.fields
    dtypes = {f["name"]: f["numpy_dtype"] for f in s.manifest["fields"]}
    assert dtypes["uid"] == "<u8" and dtypes["blob/shape"] == "<u4" and dtypes["ctf/df1_A"] == "<f4"
    imgs, _ = make_particles(300, BOX, classes=3, snr=0.05, kind="2d", seed=2)
    assert np.array_equal(s.read_images(0, 300), imgs)
    truth = np.load(s.extras_dir() / "truth.npz")
    assert np.array_equal(truth["uid"], md["uid"])
    assert np.array_equal(truth["class"], make_truth(300, 2, 0, "2d", 3)["class"])
    info = json.loads((s.extras_dir() / "truth.json").read_text())
    assert info["mixtures"]["scale"]["means"] == [0.6, 1.0] and info["noise_sigma"] > 0

    m = synth_store(tmp_path / "m.cf", 1000, box=BOX, classes=3, seed=2, kind="3d", metadata_only=True, batch_size=300)
    assert m.n == 1000 and not m.has_images and m.box == BOX and IMAGE_ROW not in m.schema.names
    assert np.array_equal(m.table(["ctf/df1_A"]).column(0).to_numpy(),
                          make_metadata(1000, seed=2, kind="3d", classes=3)["ctf/df1_A"])
    with pytest.raises(Exception, match="already exists"):
        synth_store(tmp_path / "m.cf", 10, box=BOX, metadata_only=True)
    assert synth_store(tmp_path / "m.cf", 10, box=BOX, metadata_only=True, overwrite=True).n == 10
