"""Class2D: reference-free 2D classification (EM / VDAM, random / MSA init) on synthetic stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import adjusted_rand_score

from cryoframe.algorithms.class2d import Class2D
from cryoframe.algorithms.class2d import estep as es
from cryoframe.errors import InputError
from cryoframe.testing import (
    ctf_2d,
    make_particles,
    make_templates,
    make_truth,
    pose_recovery_errors,
    synth_store,
)

N, BOX, K, PSIZE = 600, 32, 4, 2.0
CTF_FIELDS = ("df1_A", "df2_A", "df_angle_rad", "accel_kv", "cs_mm", "amp_contrast")
FAST = {"n_classes": K, "psi_step_deg": 15.0, "random_state": 0}


def truth_of(store) -> np.ndarray:  # noqa: ANN001
    return np.load(Path(store.path) / "extras" / "truth.npz")["class"].astype(np.int64)


def ctf_of(store) -> dict[str, np.ndarray]:  # noqa: ANN001
    tab = store.table([f"ctf/{f}" for f in CTF_FIELDS])
    return {f: tab.column(f"ctf/{f}").to_numpy() for f in CTF_FIELDS}


def best_correlation(a: np.ndarray, t: np.ndarray, max_shift: int = 3) -> float:
    """Normalised correlation of two images, best over rotations (3 deg) and shifts <= max_shift px."""
    a = a - a.mean()
    fa = np.fft.fft2(a)
    g = np.fft.fftfreq(a.shape[0]) * a.shape[0]
    near = np.hypot(g[:, None], g[None, :]) <= max_shift
    best = -1.0
    for ang in np.arange(0.0, 360.0, 3.0):
        r = ndimage.rotate(t, ang, reshape=False, order=1)
        r = r - r.mean()
        cc = np.fft.ifft2(fa * np.conj(np.fft.fft2(r))).real / (np.linalg.norm(a) * np.linalg.norm(r))
        best = max(best, float(cc[near].max()))
    return best


@pytest.fixture(scope="module")
def moderate(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return synth_store(tmp_path_factory.mktemp("c2d") / "snr05.cf", N, box=BOX, classes=K, snr=0.5, seed=1,
                       psize_A=PSIZE)


@pytest.fixture(scope="module")
def fitted(moderate) -> Class2D:  # noqa: ANN001
    return Class2D(n_iter=8, **FAST).fit(moderate)


# -- accuracy -------------------------------------------------------------------------------------
def test_em_recovers_true_classes_at_moderate_snr(fitted: Class2D, moderate) -> None:  # noqa: ANN001
    ari = adjusted_rand_score(truth_of(moderate), fitted.labels_)
    assert ari >= 0.9, ari
    m = fitted
    assert m.class_averages_.shape == (K, BOX, BOX) and m.class_averages_.dtype == np.float32
    # label K: the outlier class (particles that fit no class); on clean data hardly any
    assert m.labels_.shape == (N,) and m.labels_.min() >= 0 and m.labels_.max() <= K
    assert m.n_outliers_ == int((m.labels_ == K).sum()) <= 0.01 * N
    assert m.class_sizes_.sum() + m.n_outliers_ == N and m.class_priors_.sum() == pytest.approx(1.0)
    assert m.shifts_px_.shape == (N, 2) and np.all(np.abs(m.shifts_px_) <= 5)
    assert np.all((m.psi_deg_ >= 0) & (m.psi_deg_ < 360))
    assert np.all((m.posterior_max_ > 0) & (m.posterior_max_ <= 1)) and np.all(m.ess_ >= 1 - 1e-4)
    assert np.all(np.isfinite(m.log_likelihood_)) and m.noise_spectrum_.shape == (BOX // 2,)
    assert np.all(m.resolution_A_ >= 2 * PSIZE)
    assert m.n_iter_ == 8 and len(m.history_) == 8
    assert {"log_likelihood", "class_changes", "seconds"} <= set(m.history_[0])
    assert m.history_[0]["class_changes"] == 1.0 and m.history_[-1]["class_changes"] < 0.2


def test_poses_are_consistent_with_the_truth_within_each_class(fitted: Class2D) -> None:
    """psi_deg_ = true in-plane angle + a per-class offset (the class average's own orientation)."""
    truth = make_truth(N, seed=1, kind="2d", classes=K)
    for k in range(K):
        sel = fitted.labels_ == k
        d = np.deg2rad(fitted.psi_deg_[sel]) - truth["pose"][sel]
        spread = 1.0 - np.abs(np.mean(np.exp(1j * d)))  # circular variance
        assert spread < 0.05, (k, spread)
    ang_err, shift_err = pose_recovery_errors(fitted.labels_, fitted.psi_deg_, fitted.shifts_px_, truth)
    assert ang_err < 5.0 and shift_err < 0.8, (ang_err, shift_err)
    # shifts_px_ is the centring shift (cryoSPARC / RELION convention), not the centre displacement
    assert pose_recovery_errors(fitted.labels_, fitted.psi_deg_, -fitted.shifts_px_, truth)[1] > 1.5


def test_class_averages_match_true_templates_at_low_snr(tmp_path: Path) -> None:
    store = synth_store(tmp_path / "snr01.cf", N, box=BOX, classes=K, snr=0.1, seed=2, psize_A=PSIZE)
    m = Class2D(n_iter=8, **FAST).fit(store)
    templates = make_templates(K, BOX, seed=2)
    corr = np.array([[best_correlation(a, t) for t in templates] for a in m.class_averages_])
    assert corr.max(axis=1).min() >= 0.8, corr  # every average looks like a true template
    assert len(set(corr.argmax(axis=0))) == K, corr  # and every template has its own class


def test_msa_init_matches_or_beats_random(fitted: Class2D, moderate) -> None:  # noqa: ANN001
    msa = Class2D(n_iter=8, init="msa", nbasis=10, **FAST).fit(moderate)
    truth = truth_of(moderate)
    ari_msa, ari_random = adjusted_rand_score(truth, msa.labels_), adjusted_rand_score(truth, fitted.labels_)
    assert ari_msa >= min(ari_random - 0.02, 0.9), (ari_msa, ari_random)


def test_vdam_grows_minibatches_and_classifies(moderate) -> None:  # noqa: ANN001
    m = Class2D(n_iter=8, algorithm="vdam", batch_size=150, **FAST).fit(moderate)
    sizes = [h["n_particles"] for h in m.history_]
    assert sizes[0] == 150 and sizes[-1] == N and sizes == sorted(sizes)
    assert adjusted_rand_score(truth_of(moderate), m.labels_) >= 0.8


# -- determinism, checkpoints, inputs -------------------------------------------------------------
def test_same_random_state_gives_identical_labels_for_store_and_dask_input(moderate) -> None:  # noqa: ANN001
    a = Class2D(n_iter=2, **FAST).fit(moderate)
    b = Class2D(n_iter=2, psize_A=PSIZE, **FAST).fit(moderate.images(), ctf_params=ctf_of(moderate))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.class_averages_, b.class_averages_)


def test_resume_continues_like_an_uninterrupted_run(moderate, tmp_path: Path) -> None:  # noqa: ANN001
    full = Class2D(n_iter=6, checkpoint_dir=tmp_path / "full", **FAST).fit(moderate)
    first = Class2D(n_iter=3, checkpoint_dir=tmp_path / "part", **FAST).fit(moderate)
    assert first.n_iter_ == 3 and (tmp_path / "part" / "class2d_it003.npz").exists()
    resumed = Class2D(n_iter=6, checkpoint_dir=tmp_path / "part", warm_start=True, **FAST).fit(moderate)
    assert resumed.n_iter_ == 6 and [h["iteration"] for h in resumed.history_] == list(range(1, 7))
    np.testing.assert_array_equal(resumed.labels_, full.labels_)
    np.testing.assert_array_equal(resumed.class_averages_, full.class_averages_)
    np.testing.assert_array_equal(resumed.shifts_px_, full.shifts_px_)
    with pytest.raises(InputError, match="other data or parameters.*tau_fudge"):
        other = Class2D(n_iter=7, checkpoint_dir=tmp_path / "part", warm_start=True, **{**FAST, "tau_fudge": 3.0})
        other.fit(moderate)
    # scikit-learn warm start without a checkpoint: fit continues this estimator's previous run
    mem = Class2D(n_iter=3, warm_start=True, **FAST).fit(moderate)
    mem.set_params(n_iter=6).fit(moderate)
    assert [h["iteration"] for h in mem.history_] == list(range(1, 7))
    np.testing.assert_array_equal(mem.labels_, full.labels_)
    np.testing.assert_array_equal(mem.class_averages_, full.class_averages_)


def test_predict_agrees_with_the_fitted_labels(fitted: Class2D, moderate) -> None:  # noqa: ANN001
    ctf = {k: v[:200] for k, v in ctf_of(moderate).items()}
    pred = fitted.predict(moderate.read_images(0, 200), ctf_params=ctf)
    assert pred.shape == (200,) and np.mean(pred == fitted.labels_[:200]) >= 0.95


# -- errors ---------------------------------------------------------------------------------------
def test_bad_parameters_raise_input_error(moderate) -> None:  # noqa: ANN001
    small = moderate.read_images(0, 3)
    with pytest.raises(InputError, match="n_classes"):
        Class2D(n_classes=4, ctf=False).fit(small)
    with pytest.raises(InputError, match="mask_diameter_A"):
        Class2D(n_classes=2, mask_diameter_A=BOX * PSIZE + 1, psize_A=PSIZE).fit(moderate)
    with pytest.raises(InputError, match="psize_A"):
        Class2D(n_classes=2).fit(small, ctf_params=ctf_of(moderate))
    with pytest.raises(InputError, match="ctf_params"):
        Class2D(n_classes=2, psize_A=PSIZE).fit(small)
    with pytest.raises(InputError, match="algorithm"):
        Class2D(n_classes=2, algorithm="sgd", ctf=False).fit(small)
    with pytest.raises(InputError, match="ctf_mode"):
        Class2D(n_classes=2, ctf_mode="wiener", psize_A=PSIZE).fit(moderate)
    with pytest.raises(InputError, match="offset_step_px"):
        Class2D(n_classes=2, offset_step_px=0.05, ctf=False).fit(small)


# -- kernels: NumPy path explicitly, and the CuPy twin --------------------------------------------
def _kernel_inputs(n: int = 40) -> tuple[np.ndarray, dict[str, np.ndarray], dict, dict[str, np.ndarray]]:
    images, truth = make_particles(n, BOX, 3, np.inf, PSIZE, seed=3)
    ctf = {"df1_A": truth["df1_A"], "df2_A": truth["df2_A"], "df_angle_rad": truth["df_angle_rad"],
           "accel_kv": np.full(n, 300.0), "cs_mm": np.full(n, 2.7), "amp_contrast": np.full(n, 0.1)}
    mask = es.soft_mask(BOX, 14.0, 3.0)
    offsets = np.array([(x, y) for y in range(-5, 6) for x in range(-5, 6) if x * x + y * y <= 25], float)
    model = {"refs": make_templates(3, BOX, seed=3) * mask, "log_prior": np.log(np.full(3, 1 / 3)),
             "sigma2": np.full(BOX // 2, 10.0), "psi_deg": np.arange(0.0, 360.0, 5.0), "offsets": offsets,
             "up": 1, "e_shell": BOX // 2 - 1, "mask": mask, "psize_A": PSIZE, "scale_range": (0.2, 5.0)}
    return images, ctf, model, truth


def test_numpy_estep_recovers_class_angle_and_shift_of_clean_particles() -> None:
    images, ctf, model, truth = _kernel_inputs()
    out = es.estep_partition(images, ctf, model, xp=np)
    p = out["particles"]
    np.testing.assert_array_equal(p["label"], truth["class"])
    dpsi = (p["psi_deg"] - np.rad2deg(truth["pose"]) + 180.0) % 360.0 - 180.0
    assert np.mean(np.abs(dpsi) <= 5.0) >= 0.9
    assert np.mean(np.abs(p["shift"] - truth["shift"]).max(1) <= 1.0) >= 0.9
    st = out["stats"]
    assert st["num"].shape == st["den"].shape == (3, BOX, BOX // 2 + 1)
    assert st["wsum"].sum() == pytest.approx(len(images), rel=1e-5)


def test_ctf_kernel_matches_the_synthetic_ctf() -> None:
    _, ctf, _, _ = _kernel_inputs(8)
    ref = ctf_2d(BOX, PSIZE, *(ctf[k] for k in CTF_FIELDS))
    np.testing.assert_allclose(es.ctf_half(np, BOX, PSIZE, ctf), ref, atol=1e-5)
    flip = es.ctf_half(np, BOX, PSIZE, {**ctf, "flip_phases": np.r_[np.ones(4), np.zeros(4)]})
    np.testing.assert_array_equal(flip[:4], np.where(ref[:4] >= 0, 1.0, -1.0))  # phase flipping: sign only
    np.testing.assert_allclose(flip[4:], ref[4:], atol=1e-5)


def test_fused_kernels_match_the_array_module_twin() -> None:
    """The numba kernels (CPU default) and the array-module expressions (the CuPy path) agree, with
    two noise groups, sub-pixel offsets and a resolution limit below Nyquist."""
    images, ctf, model, _ = _kernel_inputs(30)
    images = images + np.random.default_rng(2).normal(0, 2.0, images.shape).astype(np.float32)
    model = {**model, "e_shell": 9, "offsets": model["offsets"] * 0.5,
             "sigma2": np.stack([np.full(BOX // 2, 2.0e3), np.full(BOX // 2, 4.0e3)])}
    groups = np.arange(30) % 2
    a = es.estep_partition(images, ctf, model, groups=groups, fused=True)
    b = es.estep_partition(images, ctf, model, groups=groups, fused=False)
    np.testing.assert_array_equal(a["particles"]["label"], b["particles"]["label"])
    for key in ("posterior_max", "ess", "loglik", "scale"):
        np.testing.assert_allclose(a["particles"][key], b["particles"][key], rtol=1e-3, atol=1e-6)
    for key in ("num", "den", "wsum", "asum", "noise", "count"):
        np.testing.assert_allclose(a["stats"][key], b["stats"][key], rtol=1e-3,
                                   atol=1e-4 * float(np.abs(b["stats"][key]).max()))
    beyond = es.shell_map(BOX) > 9
    assert not a["stats"]["num"][:, beyond].any() and a["stats"]["num"][:, ~beyond].any()
    np.testing.assert_array_equal(a["stats"]["count"], [15, 15])


def test_noise_spectra_are_estimated_per_group(moderate) -> None:  # noqa: ANN001
    """Particles of one group get 3x the noise amplitude: its spectrum comes out ~9x the other's."""
    imgs = np.asarray(moderate.images()[:300].compute(), dtype=np.float32)
    groups = np.repeat([7, 3], 150)  # any labels; group "7" (the first half) is the noisy one
    rng = np.random.default_rng(5)
    imgs[:150] += rng.normal(0, 2.0 * float(imgs.std()), imgs[:150].shape).astype(np.float32)
    ctf = {k: v[:300] for k, v in ctf_of(moderate).items()}
    m = Class2D(n_iter=3, **FAST, psize_A=PSIZE).fit(imgs, ctf_params=ctf, groups=groups)
    spec = m.group_noise_spectra_
    assert spec.shape == (2, BOX // 2)
    ratio = spec[1, 3:12] / spec[0, 3:12]  # unique() sorts the labels: row 1 is group 7
    assert np.all(ratio > 4.0), ratio
    with pytest.raises(InputError, match="groups"):
        Class2D(n_iter=1, **FAST, psize_A=PSIZE).fit(imgs, ctf_params=ctf, groups=groups[:10])


def test_e_step_limit_follows_the_resolution(fitted: Class2D) -> None:
    """Each E-step works within the previous iteration's resolution + 10 shells (RELION's
    current_size), starting at 10 shells."""
    h = fitted.history_
    assert h[0]["e_step_shell"] == 10
    for prev, cur in zip(h[:-1], h[1:], strict=True):
        res_shell = round(BOX * PSIZE / prev["resolution_A"])
        assert cur["e_step_shell"] == min(BOX // 2 - 1, res_shell + 10)
    assert h[-1]["e_step_shell"] > h[0]["e_step_shell"]  # the limit grew with the resolution


@pytest.mark.gpu
def test_cupy_estep_matches_numpy() -> None:
    from cryoframe.backend import get_array_module

    cp = get_array_module("gpu")
    images, ctf, model, _ = _kernel_inputs()
    host = es.estep_partition(images, ctf, model, xp=np)
    dev = es.estep_partition(images, ctf, model, xp=cp)
    np.testing.assert_array_equal(dev["particles"]["label"], host["particles"]["label"])
    np.testing.assert_allclose(dev["particles"]["psi_deg"], host["particles"]["psi_deg"])
    for key in ("num", "den", "wsum", "noise"):
        np.testing.assert_allclose(dev["stats"][key], host["stats"][key], rtol=1e-3,
                                   atol=1e-3 * float(np.abs(host["stats"][key]).max()))
