"""Geometry units: rotations, the one CTF, Fourier slice kernels (numba vs vectorised twin, CuPy vs
NumPy), symmetry groups, masks, FSC."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoframe.errors import InputError
from cryoframe.geometry import ctf_grid, euler_to_pose, matrix_to_pose, pose_matrix, pose_to_euler
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.backprojector import map_from_sums
from cryoframe.geometry.fsc import fsc, fsc_weighted, resolution_at
from cryoframe.geometry.masks import soft_sphere, threshold_mask
from cryoframe.geometry.symmetry import symmetry_matrices
from cryoframe.synthetic import physics as ph
from cryoframe.testing import make_volumes

CTF = {"df1_A": np.array([12000.0, 20000.0]), "df2_A": np.array([11000.0, 19500.0]),
       "df_angle_rad": np.array([0.3, -1.1]), "accel_kv": np.array([300.0, 200.0]), "cs_mm": np.array([2.7, 0.01]),
       "amp_contrast": np.array([0.1, 0.07]), "phase_shift_rad": np.array([0.0, 0.5])}


def test_rotation_round_trips() -> None:
    pose = Rotation.random(50, random_state=1).as_rotvec()
    np.testing.assert_allclose(pose_matrix(matrix_to_pose(pose_matrix(pose))), pose_matrix(pose), atol=1e-9)
    np.testing.assert_allclose(pose_matrix(euler_to_pose(pose_to_euler(pose))), pose_matrix(pose), atol=1e-9)


def test_pose_direction_is_scipys_third_matrix_column() -> None:
    from cryoframe.geometry.rotations import pose_direction

    pose = np.vstack([Rotation.random(200, random_state=2).as_rotvec(), [[0, 0, 0], [1e-9, 0, 0], [0, 0, np.pi]]])
    np.testing.assert_allclose(pose_direction(pose), Rotation.from_rotvec(pose).as_matrix()[:, :, 2], atol=1e-12)
    assert pose_direction(pose[:4].reshape(2, 2, 3)).shape == (2, 2, 3)


def test_ctf_is_shared_by_physics_and_class2d() -> None:
    from cryoframe.algorithms.class2d.estep import ctf_half

    a = ctf_grid(40, 1.7, CTF)
    b = ph.ctf_2d(40, 1.7, *(CTF[k] for k in ("df1_A", "df2_A", "df_angle_rad", "accel_kv", "cs_mm",
                                               "amp_contrast", "phase_shift_rad")))
    c = ctf_half(np, 40, 1.7, CTF)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    assert a[0, 0, 0] == pytest.approx(0.1)  # CTF(0) = +A (RELION's sign)
    assert a[1, 0, 0] == pytest.approx(np.sqrt(1 - 0.07**2) * np.sin(0.5) + 0.07 * np.cos(0.5), rel=1e-5)
    assert ph.electron_wavelength_A(300.0) == pytest.approx(0.019687, abs=1e-6)


def test_fourier_projection_matches_real_space_projection() -> None:
    v = make_volumes(1, 40, seed=2)[0]
    rot = Rotation.random(4, random_state=3).as_matrix()
    a = ph.project(v, rot)
    b = fo.project_volume(v, rot)
    for x, y in zip(a, b, strict=True):
        assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("kernel", ["extract", "insert"])
def test_numba_kernels_match_vectorised_twin(kernel: str) -> None:
    box = 24
    v = make_volumes(1, box, seed=4)[0]
    vft = fo.volume_transform(v)
    rot = Rotation.random(30, random_state=5).as_matrix()
    if kernel == "extract":
        a = fo.extract_slices(vft, rot, box, method="numba")
        b = fo.extract_slices(vft, rot, box, method="xp")
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())
        return
    f = fo.extract_slices(vft, rot, box)
    c = ctf_grid(box, 2.0, {k: np.resize(x, 30) for k, x in CTF.items()})
    w = np.linspace(0.2, 1.0, 30)
    out = []
    for m in ("numba", "xp"):
        s = fo.new_sums(box)
        fo.insert_slices(s, rot, f, c, w, box, method=m)
        out.append(s)
    for a, b in zip(*out, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9 * np.abs(b).max())


def test_reconstruction_of_noiseless_ctf_projections_recovers_the_volume() -> None:
    box, n = 32, 1500
    v = make_volumes(1, box, seed=6)[0]
    rot = Rotation.random(n, random_state=7).as_matrix()
    rng = np.random.default_rng(8)
    ctf = {k: np.resize(x, n) for k, x in CTF.items()}
    ctf["df1_A"] = rng.uniform(8000, 25000, n)
    ctf["df2_A"] = ctf["df1_A"] - 300
    c = ctf_grid(box, 2.0, ctf)
    f = fo.extract_slices(fo.volume_transform(v), rot, box) * c
    s = fo.new_sums(box)
    fo.insert_slices(s, rot, f, c, None, box)
    fo.enforce_hermitian(s)
    rec = map_from_sums(s, box)
    assert np.corrcoef(rec.ravel(), v.ravel())[0, 1] > 0.999
    assert float((rec * v).sum() / (v * v).sum()) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(("name", "order"), [("C1", 1), ("c5", 5), ("D7", 14), ("T", 12), ("O", 24), ("I", 60),
                                            ("I1", 60), ("I3", 60), ("I4", 60)])
def test_symmetry_groups_are_closed_rotation_groups(name: str, order: int) -> None:
    g = symmetry_matrices(name)
    assert len(g) == order
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", g, g), np.broadcast_to(np.eye(3), g.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(g), 1.0, atol=1e-6)
    prod = np.einsum("aij,bjk->abik", g, g).reshape(-1, 9)
    d = np.abs(prod[:, None, :] - g.reshape(1, -1, 9)).max(-1).min(1)
    assert d.max() < 1e-4  # closed under products


def test_relion_axis_conventions_of_dihedral_and_icosahedral() -> None:
    d = symmetry_matrices("D2")
    assert any(np.allclose(m, np.diag([1.0, -1.0, -1.0]), atol=1e-9) for m in d)  # 2-fold about x
    i2 = symmetry_matrices("I")  # RELION's default I2: a 2-fold about z
    assert any(np.allclose(m, np.diag([-1.0, -1.0, 1.0]), atol=1e-6) for m in i2)
    five = Rotation.from_rotvec(np.array([0.525731114, 0, 0.850650807]) * 2 * np.pi / 5).as_matrix()
    assert any(np.allclose(m, five, atol=1e-6) for m in i2)
    assert not any(np.allclose(m, five, atol=1e-6) for m in symmetry_matrices("I1"))  # I1 is I2 turned 90° about z


@pytest.mark.parametrize("bad", ["", "C", "D1", "X3", "C-2", "Dx", "I5", "C 2 3"])
def test_malformed_symmetry_is_an_input_error(bad: str) -> None:
    with pytest.raises(InputError):
        symmetry_matrices(bad)


def test_masks() -> None:
    s = soft_sphere(32, 8, 4)
    assert s[16, 16, 16] == 1.0 and s[16, 16, 16 + 8] == 1.0 and s[16, 16, 16 + 12] == 0.0
    assert 0 < s[16, 16, 16 + 10] < 1
    v = np.zeros((20, 20, 20))
    v[10, 10, 10] = 1.0
    m = threshold_mask(v, 0.5, extend_px=3, soft_edge_px=2)
    assert m[10, 10, 12] == 1.0 and m[10, 10, 13] == pytest.approx(0.5 + 0.5 * np.cos(np.pi * 1 / 2))  # d = 1
    assert m[10, 10, 15] == 0.0


def test_fsc_and_resolution() -> None:
    v = make_volumes(1, 32, seed=9)[0]
    assert np.allclose(fsc(v, v)[1:], 1.0)
    rng = np.random.default_rng(0)
    a, b = v + rng.normal(0, 0.5, v.shape), v + rng.normal(0, 0.5, v.shape)
    c = fsc(a, b)
    assert c[1] > 0.9 and c[-1] < 0.5
    r = resolution_at(c, 32, 2.0, 0.143)
    assert 4.0 <= r < 64.0
    assert resolution_at(np.ones(17), 32, 2.0, 0.5) == 4.0
    w = fsc_weighted(a, c)
    assert np.corrcoef(w.ravel(), v.ravel())[0, 1] > np.corrcoef(a.ravel(), v.ravel())[0, 1]


def _slices_and_sums_match_numpy(cp) -> None:  # noqa: ANN001
    from cryoframe.backend import to_host

    box = 32
    v = make_volumes(1, box, seed=4)[0]
    rot = Rotation.random(64, random_state=5).as_matrix()
    vft = fo.volume_transform(v)
    a = fo.extract_slices(vft, rot, box)
    b = to_host(fo.extract_slices(cp.asarray(vft), cp.asarray(rot), box, xp=cp))
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())
    c = ctf_grid(box, 2.0, {k: np.resize(x, 64) for k, x in CTF.items()})
    s_np, s_cp = fo.new_sums(box), fo.new_sums(box, xp=cp)
    fo.insert_slices(s_np, rot, a, c, None, box)
    fo.insert_slices(s_cp, cp.asarray(rot), cp.asarray(a), cp.asarray(c), None, box, xp=cp)
    for x, y in zip(s_np, s_cp, strict=True):
        np.testing.assert_allclose(x, to_host(y), atol=1e-3 * np.abs(x).max())


@pytest.mark.gpu
def test_cupy_slices_match_numpy() -> None:
    from cryoframe.backend import get_array_module

    _slices_and_sums_match_numpy(get_array_module("gpu"))


def test_slices_on_the_gpu_branch_match_numpy(fake_gpu) -> None:  # noqa: ANN001
    """The same on :mod:`fake_cupy` (CuPy's host/device rules over NumPy): runs without a GPU."""
    _slices_and_sums_match_numpy(fake_gpu)


def test_fused_partition_kernel_matches_vectorised_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryoframe.algorithms.reconstruct import partition_sums

    box, n = 24, 40
    rng = np.random.default_rng(0)
    img = rng.normal(size=(n, box, box)).astype(np.float32)
    rot = Rotation.random(n, random_state=1).as_matrix()
    sh = rng.uniform(-2, 2, (n, 2))
    ctf = {k: np.resize(x, n) for k, x in CTF.items()}
    ctf["df1_A"] = rng.uniform(9e3, 2e4, n)
    half, w = np.arange(n) % 2, rng.uniform(0, 1, n)
    kw = {"box": box, "psize_A": 1.5, "sym": symmetry_matrices("C3")}
    a = partition_sums(img, rot, sh, ctf, w, half, **kw)
    monkeypatch.setattr(fo, "_use_numba", lambda xp, method: False)
    b = partition_sums(img, rot, sh, ctf, w, half, **kw)
    np.testing.assert_allclose(a, b, atol=1e-6 * np.abs(b).max())
