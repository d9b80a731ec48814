"""Ab-initio reconstruction: the three-phase schedule, pose evaluation up to a global rotation and
hand, pose recovery on a clean tiny set, and the job end to end from a RELION .star without poses
(import -> abinitio -> export .star -> re-import), --particles/unused set, --continue, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryoframe.algorithms.abinitio import AbInitio, Schedule
from cryoframe.algorithms.abinitio.evaluate import pose_errors
from cryoframe.cli import main as cli
from cryoframe.errors import InputError
from cryoframe.geometry import fourier as fo
from cryoframe.storage.store import ParticleStore
from cryoframe.synthetic import make_particles, write_star_dataset

FAST = ["--initial-iterations", "2", "--intermediate-iterations", "2", "--final-iterations", "2",
        "--initial-minibatch", "40", "--final-minibatch", "60", "--final-passes", "1", "--no-plots"]


def test_schedule_fixes_anneals_then_holds() -> None:
    s = Schedule(10, 10, 5, 90, 300, 35.0, 12.0, 0.5, 0.1, 0.2, 10, 20)
    assert s.n_iter == 25
    assert [s.phase(t) for t in (0, 9, 10, 19, 20, 24)] == ["initial"] * 2 + ["intermediate"] * 2 + ["final"] * 2
    assert s.resolution_A(0) == 35.0 and s.resolution_A(9) == 35.0 and np.isclose(s.resolution_A(24), 12.0)
    mid = s.resolution_A(14)
    assert np.isclose(1 / mid, 0.5 / 35 + 0.5 / 12)  # linear in frequency
    assert s.minibatch(0) == 90 and s.minibatch(19) == 300
    assert s.learning_rate(0) == 0.5 and np.isclose(s.learning_rate(22), 0.1)
    assert s.similarity(9) == 0.2 and np.isclose(s.similarity(15), 0.1) and s.similarity(20) == 0.0


def test_initial_resolution_default_resolves_the_particle_in_small_boxes() -> None:
    # cryoSPARC's 35 Å, but at least 6.4 cycles per box and never finer than --max-resolution
    assert AbInitio(psize_A=2.0).initial_resolution(64) == 20.0  # 128 Å box
    assert AbInitio(psize_A=1.0).initial_resolution(256) == 35.0  # 256 Å box
    assert AbInitio(psize_A=2.0, max_resolution_A=25.0).initial_resolution(64) == 25.0
    assert AbInitio(psize_A=2.0, initial_resolution_A=30.0).initial_resolution(64) == 30.0
    s = AbInitio(psize_A=2.0).schedule(64)
    assert s.resolution_A(0) == 20.0 and np.isclose(s.resolution_A(s.n_iter - 1), 12.0)
    with pytest.raises(Exception, match="initial-resolution"):
        AbInitio(psize_A=2.0, initial_resolution_A=10.0)._validate(100, 64)


def test_intermediate_iterations_default_depends_on_the_number_of_classes() -> None:
    one, four = AbInitio(1, psize_A=2.0), AbInitio(4, psize_A=2.0)
    assert (one.n_intermediate(), four.n_intermediate()) == (40, 80)
    assert one.schedule(64).n_iter == 80 and four.schedule(64).n_iter == 120
    assert four.schedule(64).phase(119) == "intermediate" and four.schedule(64).resolution_A(119) == pytest.approx(12.0)
    assert AbInitio(4, psize_A=2.0, intermediate_iterations=10).schedule(64).n_iter == 50


def test_class_similarity_default_anneals_over_the_first_tenth_of_the_intermediate_phase() -> None:
    # blurring the class assignments only while classes form: 0.1 through the initial iterations, to 0
    # over the first 8 of K = 4's 80 intermediate ones; explicit anneal iterations still win
    s = AbInitio(4, psize_A=2.0).schedule(64)
    assert s.class_similarity_anneal_start == 40 and s.class_similarity_anneal_end == 48
    assert s.similarity(39) == pytest.approx(0.1) and s.similarity(44) == pytest.approx(0.05)
    assert s.similarity(48) == 0.0 and s.similarity(100) == 0.0
    assert AbInitio(4, psize_A=2.0, intermediate_iterations=3).schedule(64).class_similarity_anneal_end == 41
    assert AbInitio(4, psize_A=2.0, intermediate_iterations=0).schedule(64).class_similarity_anneal_end == 40
    own = AbInitio(4, psize_A=2.0, class_similarity_anneal_start=50, class_similarity_anneal_end=100).schedule(64)
    assert (own.class_similarity_anneal_start, own.class_similarity_anneal_end) == (50, 100)
    assert AbInitio(4, psize_A=2.0, class_similarity_anneal_start=60).schedule(64).class_similarity_anneal_end == 68


def test_defaults_agree_across_model_job_api_and_cli() -> None:
    # the defaults are written out in the estimator, the job, the API and the CLI: they must not drift
    import inspect

    from cryoframe import api
    from cryoframe.cli import build_parser
    from cryoframe.jobs import abinitio as job

    renamed = {"classes": "n_classes", "seed": "random_state", "starts": "n_starts"}
    model = {k: v.default for k, v in inspect.signature(AbInitio.__init__).parameters.items()}
    checked = 0
    for fn in (job.abinitio, api.abinitio):
        for name, par in inspect.signature(fn).parameters.items():
            key = renamed.get(name, name)
            if key in model and par.default is not inspect.Parameter.empty:
                assert par.default == model[key], f"{fn.__module__}.{fn.__name__}({name}={par.default!r}) vs model {model[key]!r}"
                checked += 1
    assert checked == 2 * 28
    cli_args = build_parser("abinitio").parse_args(["abinitio", "s.cf", "--out", "o.cf"])
    apid = {k: v.default for k, v in inspect.signature(api.abinitio).parameters.items()}
    flags = {"max_resolution": "max_resolution_A", "initial_resolution": "initial_resolution_A",
             "coarse_step": "coarse_step_deg", "final_coarse_step": "final_coarse_step_deg",
             "fine_step": "fine_step_deg", "shift_range": "shift_range_px", "shift_step": "shift_step_px",
             "candidates": "n_candidates"}
    n_cli = 0
    for name, value in vars(cli_args).items():
        key = flags.get(name, name)
        if key in apid and key not in ("store", "out", "resume", "overwrite", "device", "scheduler"):
            assert value == apid[key], f"--{name.replace('_', '-')} default {value!r} vs api {apid[key]!r}"
            n_cli += 1
    assert n_cli >= 25


def test_class_maps_are_chosen_across_starts_to_explain_the_particles_together() -> None:
    from cryoframe.algorithms.abinitio.starts import pick_classes as _pick_classes

    # 100 particles of structure A, 100 of B; candidate maps: a blend fitting both moderately,
    # an A map, a duplicate of it, a B map
    a = np.r_[np.zeros(100), np.full(100, -50.0)]
    b = a[::-1]
    ev = np.stack([np.full(200, -10.0), a, a + 1e-3, b], 1)
    assert sorted(_pick_classes(ev, 2)) == [1, 3] or sorted(_pick_classes(ev, 2)) == [2, 3]  # not the blend
    assert _pick_classes(ev, 1) == [0]  # alone, the blend explains most
    assert len(set(_pick_classes(ev, 3))) == 3


def test_pose_errors_remove_global_rotation_and_hand() -> None:
    true = Rotation.random(200, random_state=0).as_matrix()
    g = Rotation.from_rotvec([0.3, -1.2, 0.7]).as_matrix()
    est = np.einsum("ij,njk->nik", g.T, true)  # R_true = G R_est
    r = pose_errors(est, true)
    assert r["hand"] == "same" and r["median_deg"] < 1e-5 and np.allclose(r["rotation"], g, atol=1e-6)
    f = np.diag([1.0, 1.0, -1.0])
    mirrored = np.einsum("ij,njk->nik", g.T, f @ true @ f)
    r = pose_errors(mirrored, true)
    assert r["hand"] == "mirrored" and r["median_deg"] < 1e-5
    noisy = Rotation.from_matrix(est) * Rotation.from_rotvec(np.radians(30) * np.eye(3)[np.arange(200) % 3])
    assert pose_errors(noisy.as_matrix(), true)["median_deg"] > 25


def _tiny(n: int = 300, box: int = 32, snr: float = 2.0) -> tuple[np.ndarray, dict, dict]:
    imgs, t = make_particles(n, box, classes=1, snr=snr, psize_A=4.0, kind="3d", seed=0, ctf=True)
    ctf = {"df1_A": t["df1_A"], "df2_A": t["df2_A"], "df_angle_rad": t["df_angle_rad"], "accel_kv": np.full(n, 300.0),
           "cs_mm": np.full(n, 2.7), "amp_contrast": np.full(n, 0.1)}
    return imgs, t, ctf


def _same_fit(a: AbInitio, b: AbInitio, scale: float = 1.0) -> None:
    """``a`` has ``b``'s poses (float32 rounding can flip a near tie by one fine shift step for a
    particle or two) and ``b``'s maps times ``scale``."""
    cos = (np.einsum("nij,nij->n", a.rot_, b.rot_) - 1.0) / 2.0
    assert np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max() < 0.5
    assert np.mean(np.abs(a.shifts_px_ - b.shifts_px_).max(1) > 1e-3) <= 0.02
    np.testing.assert_allclose(a.volumes_ / scale, b.volumes_, atol=1e-3 * float(np.abs(b.volumes_).max()))


TINY_FIT = dict(psize_A=4.0, initial_resolution_A=30.0, max_resolution_A=16.0, initial_iterations=3,
                intermediate_iterations=1, final_iterations=1, initial_minibatch=40, final_minibatch=60,
                final_passes=1, random_state=0, n_starts=1)


def test_an_image_offset_changes_nothing() -> None:
    """Particles not normalised to a zero background (raw counts, another program's extraction) carry an
    offset: the search and the volumes leave the image mean (DC) out, so the poses and maps are those
    of the zero-mean images, with no constant added to the maps.  With the DC in, an offset of 3 sd took
    the K = 1 bench from 22.6 to 130 deg median pose error (round 2 session 18, ad hoc)."""
    imgs, _, ctf = _tiny(n=160, box=24)
    _same_fit(AbInitio(1, **TINY_FIT).fit(imgs + 3.0 * imgs.std(), ctf), AbInitio(1, **TINY_FIT).fit(imgs, ctf))


def test_normalise_noise_undoes_per_particle_scales() -> None:
    """``normalise_noise``: each particle divided by its outer-shell noise level, so particles of
    different scales (exposures of different dose, not normalised at extraction) give the poses and
    maps of the normalised ones, up to one global scale.  Per-particle scales (lognormal, sd 0.5) took
    the K = 1 bench from 22.6 to 61.7 deg median pose error; with the option 22.6 (round 2 session 18, ad hoc)."""
    imgs, _, ctf = _tiny(n=160, box=24)
    g = np.random.default_rng(1).lognormal(0.0, 0.5, len(imgs)).astype(np.float32)
    ref = AbInitio(1, **TINY_FIT, normalise_noise=True).fit(imgs, ctf)
    raw = AbInitio(1, **TINY_FIT, normalise_noise=True).fit(imgs * g[:, None, None], ctf)
    ratio = raw.noise_scale_ / ref.noise_scale_
    np.testing.assert_allclose(ratio / np.median(ratio), g / np.median(g), rtol=1e-3)
    _same_fit(raw, ref, float(np.median(g / ratio)))  # the images' common scale after normalising
    plain = AbInitio(1, **TINY_FIT).fit(imgs, ctf)
    assert np.all(plain.noise_scale_ == 1.0)  # off by default


def test_class_maps_reconstruct_in_a_cropped_box_as_at_the_full_box(monkeypatch: pytest.MonkeyPatch) -> None:
    """The final class maps are reconstructed in a Fourier-cropped box (nothing beyond
    max_resolution_A is inserted) and padded back: the same map, density scale, half maps and FSC
    resolution as a reconstruction at the particles' own box, in a fraction of its grid."""
    from types import SimpleNamespace

    from cryoframe.algorithms.abinitio import final as fin
    from cryoframe.algorithms.reconstruct import Reconstructor

    n, box, psize = 400, 48, 2.0
    imgs, t = make_particles(n, box, classes=1, snr=2.0, psize_A=psize, kind="3d", seed=0, ctf=True)
    ctf = {"df1_A": t["df1_A"], "df2_A": t["df2_A"], "df_angle_rad": t["df_angle_rad"], "accel_kv": np.full(n, 300.0),
           "cs_mm": np.full(n, 2.7), "amp_contrast": np.full(n, 0.1)}
    rot, shifts = Rotation.from_rotvec(t["pose"]).as_matrix(), -t["shift"]
    m = SimpleNamespace(box_=box, psize_A=psize, max_resolution_A=20.0, n_classes=1, pad=2, symmetry="C1",
                        device="cpu", rot_=rot, shifts_px_=shifts, noise_scale_=np.ones(n),
                        _rng=lambda *k: np.random.default_rng(np.random.SeedSequence([0, 17, *k])))
    boxes: list[int] = []
    fit = Reconstructor.fit
    monkeypatch.setattr(Reconstructor, "fit", lambda self, *a, **kw: (boxes.append(self.box), fit(self, *a, **kw))[1])
    fin.class_maps(m, imgs, ctf, np.ones((n, 1)))
    assert boxes == [32]  # twice the box whose Nyquist is 20 Å (10 px, raised to 16), not 48
    half = np.zeros(n, dtype=np.int64)
    half[m._rng(4).permutation(n)[(n + 1) // 2:]] = 1
    full = Reconstructor(box, psize, max_resolution_A=20.0, regulariser="fsc").fit(imgs, rot, shifts, half, ctf=ctf)
    assert m.volumes_.shape == (1, box, box, box) and m.half_maps_.shape == (1, 2, box, box, box)
    for got, ref in ((m.volumes_[0], full.map_), (m.half_maps_[0, 0], full.half_maps_[0])):
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
        assert got.std() == pytest.approx(ref.std(), rel=0.05)  # the density scale of the full box
    assert m.fsc_.shape == (1, box // 2 + 1) and np.all(m.fsc_[0, 17:] == 0)  # beyond the cropped box's Nyquist
    np.testing.assert_allclose(m.fsc_[0, :5], full.fsc_[:5], atol=0.02)  # within max_resolution_A (4.8 px^-1)
    assert m.resolution_A_[0] == pytest.approx(full.resolution_["0.143"], rel=0.05)


@pytest.mark.slow
def test_final_passes_find_poses_against_a_correct_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search + reconstruction path of the final passes: started from sums of the true poses
    (no SGD iterations), the exhaustive branch-and-bound passes recover the poses."""
    imgs, t, ctf = _tiny()
    rot = Rotation.from_rotvec(t["pose"]).as_matrix()

    def true_sums(self: AbInitio, k: int, n: int) -> np.ndarray:
        return self._batch_sums(np.arange(n), rot[:, None], -t["shift"][:, None], np.ones((n, 1)),
                                self._noise_weights(None), self.r_max_)

    monkeypatch.setattr(AbInitio, "_initial_sums", true_sums)
    m = AbInitio(1, psize_A=4.0, initial_iterations=0, intermediate_iterations=0, final_iterations=0,
                 final_passes=2, random_state=0).fit(imgs, ctf)
    err = pose_errors(m.rot_, rot)
    assert err["hand"] == "same" and np.allclose(err["rotation"], np.eye(3), atol=0.1)
    # random poses: ~110 deg, 1%; without the per-particle contrast marginalised out of the score
    # (scale_prior_sd=None) the faint third of these particles went astray: 12.7 deg, 42%
    assert err["median_deg"] < 9.0 and err["within_10_deg"] > 0.55
    assert np.median(np.abs(m.shifts_px_ + t["shift"])) < 1.0
    assert m.volumes_.shape == (1, 32, 32, 32) and np.isfinite(m.resolution_A_[0])


@pytest.mark.slow
def test_final_search_of_classes_refines_under_the_most_probable_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """K > 1 final passes: class evidences from the soft search of every class, the full search only
    under each particle's most probable class (the other classes keep the soft search's best poses);
    started from each class's true-pose sums the labels and poses come out right."""
    from sklearn.metrics import adjusted_rand_score

    from cryoframe.algorithms.abinitio.final import final_search

    n = 240
    imgs, t = make_particles(n, 32, classes=2, snr=2.0, psize_A=4.0, kind="3d", seed=0, ctf=True)
    ctf = {k: t[k] for k in ("df1_A", "df2_A", "df_angle_rad")}
    ctf.update(accel_kv=np.full(n, 300.0), cs_mm=np.full(n, 2.7), amp_contrast=np.full(n, 0.1))
    rot = Rotation.from_rotvec(t["pose"]).as_matrix()
    cls = np.asarray(t["class"])

    def true_sums(self: AbInitio, k: int, n: int) -> np.ndarray:
        sel = np.flatnonzero(cls == k)
        return self._batch_sums(sel, rot[sel][:, None], -t["shift"][sel][:, None], np.ones((len(sel), 1)),
                                self._noise_weights(None), self.r_max_)

    monkeypatch.setattr(AbInitio, "_initial_sums", true_sums)
    m = AbInitio(2, psize_A=4.0, initial_iterations=0, intermediate_iterations=0, final_iterations=0,
                 final_passes=1, n_starts=1, random_state=0).fit(imgs, ctf)
    assert adjusted_rand_score(cls, m.labels_) > 0.9
    err = pose_errors(m.rot_, rot)
    assert err["median_deg"] < 9.0 and err["within_10_deg"] > 0.55
    # the final search scores its coarse grid at the full search radius
    assert m._search.levels(m.r_max_, True)[1][0] == pytest.approx(m.r_max_)

    idx = np.arange(60)
    res, ev = final_search(m, idx, m.r_max_)
    soft, ev_soft = m._search_all(idx, None, m.r_max_, full=False, soft=True)
    np.testing.assert_allclose(ev, ev_soft)
    best = m._posteriors(ev, 0.0).argmax(1)
    T = m._search.n_candidates
    for k in range(2):
        sel, other = np.flatnonzero(best == k), np.flatnonzero(best != k)
        full = m._search_all(idx[sel], None, m.r_max_, full=True, classes=[k])[0][0]
        np.testing.assert_allclose(res[k].rot[sel], full.rot[:, :T])
        np.testing.assert_allclose(res[k].error[sel], full.error[:, :T])
        np.testing.assert_allclose(res[k].rot[other], soft[k].rot[other, :T])
        np.testing.assert_allclose(res[k].weight.sum(1), 1.0)


def test_final_phase_iterations_search_as_the_final_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SGD iterations of the final phase use the final passes' search (full resolution, refined;
    K > 1 under the most probable class), the earlier ones the soft search."""
    from cryoframe.algorithms.abinitio import final

    calls: list[int] = []
    real = final.final_search

    def counted(m: AbInitio, idx: np.ndarray, r: float) -> tuple:
        calls.append(len(idx))
        return real(m, idx, r)

    monkeypatch.setattr(final, "final_search", counted)
    imgs, _, ctf = _tiny(n=120)
    m = AbInitio(2, psize_A=4.0, initial_iterations=1, intermediate_iterations=1, final_iterations=2,
                 initial_minibatch=30, final_minibatch=40, n_starts=1, random_state=0).fit(imgs, ctf)
    assert calls == [40, 40, 120]  # two final-phase minibatches, then the final pass over all particles
    assert [h["phase"] for h in m.history_] == ["initial", "intermediate", "final", "final", "final pass 1"]


@pytest.mark.slow
@pytest.mark.xfail(reason="known gap: SGD from random volumes does not yet reach the true structure on this data",
                   strict=False)
def test_abinitio_from_random_volumes_recovers_poses() -> None:
    imgs, t, ctf = _tiny()
    m = AbInitio(1, psize_A=4.0, initial_resolution_A=18.0, initial_iterations=20, intermediate_iterations=10,
                 final_iterations=5, final_passes=2, random_state=0, n_starts=1).fit(imgs, ctf)
    err = pose_errors(m.rot_, Rotation.from_rotvec(t["pose"]).as_matrix())
    assert err["median_deg"] < 10.0 and err["within_10_deg"] > 0.5
    assert len(m.history_) == 35 + 2 and {"resolution_A", "learning_rate", "minibatch", "class_sizes",
                                          "time_s"} <= set(m.history_[0])


@pytest.fixture(scope="module")
def noposes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("abinit")
    write_star_dataset(d, 120, box=24, classes=1, snr=5.0, psize_A=4.0, kind="3d", seed=1)
    st = starfile.read(d / "particles.star", always_dict=True)
    p = st["particles"]
    st["particles"] = p.drop(columns=[c for c in p.columns if c.startswith(("rlnAngle", "rlnOrigin"))
                                      or c in ("rlnClassNumber", "rlnRandomSubset", "rlnMaxValueProbDistribution")])
    starfile.write(st, d / "particles_noposes.star", overwrite=True)
    assert cli(["-q", "import", str(d / "particles_noposes.star"), "--out", str(d / "clean.cf")]) == 0
    return d


@pytest.mark.slow
def test_cli_from_star_without_poses_to_star_with_poses(noposes: Path) -> None:
    d = noposes
    clean = ParticleStore(d / "clean.cf")
    assert not any(f.startswith("alignments3D") for f in clean.fields)
    out = d / "abinit.cf"
    assert cli(["-q", "abinitio", str(d / "clean.cf"), "--classes", "1", "--seed", "0", "--out", str(out), *FAST]) == 0
    s = ParticleStore(out)
    t = s.table(["alignments3D/pose", "alignments3D/shift", "alignments3D/class", "alignments3D/class_posterior"])
    pose = np.stack(t.column("alignments3D/pose").to_numpy(zero_copy_only=False))
    assert s.n == 120 and np.all(np.isfinite(pose)) and np.all(np.linalg.norm(pose, axis=1) <= np.pi + 1e-5)
    model = json.loads((s.extras_dir() / "model.json").read_text())
    assert len(model["history"]) == 7 and model["classes"][0]["count"] == 120
    assert (s.extras_dir() / "class_000.mrc").is_file() and (s.extras_dir() / "volumes.zarr").is_dir()
    assert ParticleStore(s.extras_dir() / "sets" / "class_000.cf").n == 120
    assert cli(["-q", "export", str(out), "--format", "star", "--out", str(d / "abinit.star")]) == 0
    st = starfile.read(d / "abinit.star", always_dict=True)["particles"]
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnClassNumber"):
        assert col in st.columns
    assert set(st["rlnClassNumber"]) == {1}
    # round trip: the re-imported angles are the estimated poses
    assert cli(["-q", "import", str(d / "abinit.star"), "--out", str(d / "back.cf")]) == 0
    back = ParticleStore(d / "back.cf").table(["alignments3D/pose", "alignments3D/shift"])
    rb = Rotation.from_rotvec(np.stack(back.column("alignments3D/pose").to_numpy(zero_copy_only=False))).as_matrix()
    ang = np.degrees(Rotation.from_matrix(np.einsum("nji,njk->nik", rb, Rotation.from_rotvec(pose).as_matrix()))
                     .magnitude())
    assert ang.max() < 1e-3
    sh = np.stack(t.column("alignments3D/shift").to_numpy(zero_copy_only=False))
    assert np.allclose(np.stack(back.column("alignments3D/shift").to_numpy(zero_copy_only=False)), sh, atol=1e-3)


@pytest.mark.slow
def test_particles_subset_and_unused_set_then_continue(noposes: Path) -> None:
    d = noposes
    out = d / "sub.cf"
    assert cli(["-q", "abinitio", str(d / "clean.cf"), "--particles", "80", "--seed", "3", "--out", str(out),
                *FAST]) == 0
    s = ParticleStore(out)
    unused = ParticleStore(s.extras_dir() / "sets" / "unused.cf")
    assert s.n == 80 and unused.n == 40
    uids = set(s.table(["uid"]).column(0).to_pylist()) | set(unused.table(["uid"]).column(0).to_pylist())
    assert len(uids) == 120
    assert unused.read_images(0, 2).shape == (2, 24, 24)
    more = [a if a != "2" or FAST[i - 1] != "--final-iterations" else "4" for i, a in enumerate(FAST)]
    assert cli(["-q", "abinitio", str(out), "--seed", "3", "--continue", "--out", str(d / "more.cf"), *more]) == 0
    hist = json.loads((ParticleStore(d / "more.cf").extras_dir() / "model.json").read_text())["history"]
    assert [h["iteration"] for h in hist[:8]] == list(range(1, 9)) and len(hist) == 9
    for st in (out, d / "more.cf"):  # the lineage records the intermediate count the run used
        assert ParticleStore(st).lineage[-1]["params"]["intermediate_iterations"] == 2


@pytest.mark.slow
def test_three_classes_with_similarity_and_symmetry_option(noposes: Path) -> None:
    d = noposes
    out = d / "k3.cf"
    assert cli(["-q", "abinitio", str(d / "clean.cf"), "--classes", "3", "--max-resolution", "12", "--symmetry", "C1",
                "--class-similarity", "0.1", "--normalise-noise", "--out", str(out), *FAST]) == 0
    s = ParticleStore(out)
    assert s.lineage[-1]["params"]["normalise_noise"] is True
    post = np.stack(s.table(["alignments3D_multi/class_posterior"]).column(0).to_numpy(zero_copy_only=False))
    assert post.shape == (120, 3) and np.allclose(post.sum(1), 1, atol=1e-4)
    sizes = [ParticleStore(s.extras_dir() / "sets" / f"class_{k:03d}.cf").n for k in range(3)]
    assert sum(sizes) == 120
    model = json.loads((s.extras_dir() / "model.json").read_text())
    hist = model["history"]
    assert hist[0]["class_similarity"] == pytest.approx(0.1) and hist[5]["class_similarity"] == 0.0
    # the 3 class maps were chosen among the 4 default starts' 12, each at most once
    (starts,) = [e for e in model["empty_class_events"] if e["event"] == "starts"]
    picks = [tuple(p) for p in starts["classes_from"]]
    assert len(picks) == 3 == len(set(picks)) and all(0 <= a < 4 and 0 <= b < 3 for a, b in picks)


@pytest.mark.parametrize("args, msg", [
    (["--classes", "500"], "larger than the number of particles"),
    (["--symmetry", "Q7"], "unknown symmetry"),
    (["--max-resolution", "4"], "beyond Nyquist"),
    (["--max-resolution", "-3"], "--max-resolution must be a positive number of Å"),
    (["--max-resolution", "nan"], "--max-resolution must be a positive number of Å"),
    (["--initial-resolution", "0"], "--initial-resolution must be a positive number of Å"),
    (["--particles", "1000"], "--particles"),
    # a zero step built an endless rotation grid until the process was killed (leaving its temporary output)
    (["--coarse-step", "0"], "--coarse-step must be in (0, 180] degrees"),
    (["--final-coarse-step", "200"], "--final-coarse-step must be in (0, 180] degrees"),
    (["--fine-step", "30"], "--fine-step must be in (0, 15.0] degrees"),
    (["--fine-step", "0"], "--fine-step must be in (0, 15.0] degrees"),
    (["--shift-step", "0"], "--shift-step must be > 0 px"),
    (["--shift-range", "-2"], "--shift-range must be >= 0 px"),
    (["--candidates", "0"], "--candidates must be >= 1"),
    (["--noise-init-sigmascale", "0"], "--noise-init-sigmascale must be > 0"),
    (["--noise-priorw", "-1"], "--noise-priorw must be >= 0"),
    (["--class-similarity-anneal-start", "5", "--class-similarity-anneal-end", "3"], "is before"),
    (["--starts", "0"], "--starts must be an integer >= 1"),
])
def test_bad_input_one_error_nothing_written(noposes: Path, args: list[str], msg: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = noposes / "bad.cf"
    assert cli(["abinitio", str(noposes / "clean.cf"), "--out", str(out), *args, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not out.exists() and not list(noposes.glob(".bad.cf*"))


def test_missing_images_is_one_clear_error(noposes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    src = noposes / "clean.cf"
    moved = tmp_path / "clean.cf"
    shutil.copytree(src, moved)
    # a store linking images it no longer finds
    assert cli(["-q", "query", str(moved), "--where", "`ctf/df1_A` > 0", "--out", str(tmp_path / "q.cf")]) == 0
    shutil.rmtree(moved)
    out = tmp_path / "x.cf"
    assert cli(["abinitio", str(tmp_path / "q.cf"), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and not out.exists()


def test_several_starts_keep_the_best_initial_phase_and_single_start_is_unchanged(tmp_path: Path) -> None:
    imgs, _, ctf = _tiny(n=120, box=24)
    kw = dict(psize_A=4.0, initial_resolution_A=30.0, max_resolution_A=16.0, initial_iterations=3,
              intermediate_iterations=1, final_iterations=1, initial_minibatch=40, final_minibatch=60,
              final_passes=1, random_state=0)
    one = AbInitio(1, **kw, n_starts=1).fit(imgs, ctf)
    again = AbInitio(1, **kw, n_starts=1).fit(imgs, ctf)
    np.testing.assert_array_equal(one.rot_, again.rot_)  # seeded: the same run twice
    three = AbInitio(1, **kw, n_starts=3, checkpoint_dir=tmp_path / "ck", checkpoint_every=1).fit(imgs, ctf)
    ev = [e for e in three.events_ if e.get("event") == "starts"]
    assert len(ev) == 1 and len(ev[0]["mean_error"]) == 3 and ev[0]["iteration"] == 3
    assert ev[0]["chosen"] == int(np.argmin(ev[0]["mean_error"]))
    assert len(three.history_) == 3 + 1 + 1 + 1  # the chosen start's iterations, then the rest, then the final pass
    # the checkpoint carries the chosen start: continuing reproduces the run
    cont = AbInitio(1, **kw, n_starts=3, checkpoint_dir=tmp_path / "ck").fit(imgs, ctf, resume=True)
    np.testing.assert_allclose(cont.rot_, three.rot_)
    with pytest.raises(InputError, match="--starts must be an integer >= 1"):
        AbInitio(1, **kw, n_starts=0).fit(imgs, ctf)


def test_continue_keeps_the_checkpointed_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameters left at None (the intermediate count by K, the similarity window) are resolved when
    a run starts; its checkpoint keeps the resolved values, so a continuation under changed defaults
    (as in round 2, when the window's default shrank) runs the checkpointed schedule: the same poses
    and classes as one uninterrupted run under the old defaults."""
    from cryoframe.algorithms.abinitio import checkpoint as ckmod

    imgs, _, ctf = _tiny(n=120, box=24)
    kw = dict(psize_A=4.0, initial_resolution_A=30.0, max_resolution_A=16.0, initial_iterations=2,
              initial_minibatch=40, final_minibatch=60, final_passes=1, random_state=0, n_starts=1)

    def defaults(n_int: int, window: int) -> None:
        monkeypatch.setattr(AbInitio, "n_intermediate", lambda self: n_int if self.intermediate_iterations is None
                            else int(self.intermediate_iterations))
        monkeypatch.setattr(AbInitio, "similarity_anneal_length", lambda self: window)

    defaults(4, 2)  # "old" defaults
    straight = AbInitio(2, **kw, final_iterations=2).fit(imgs, ctf)
    s_old = straight.schedule_
    assert (s_old.intermediate_iterations, s_old.class_similarity_anneal_start, s_old.class_similarity_anneal_end) == (4, 2, 4)
    AbInitio(2, **kw, final_iterations=0, checkpoint_dir=tmp_path / "ck").fit(imgs, ctf)  # stops after 6
    defaults(8, 1)  # "new" defaults, then --continue --final-iterations 2
    cont = AbInitio(2, **kw, final_iterations=2, checkpoint_dir=tmp_path / "ck").fit(imgs, ctf, resume=True)
    assert cont.schedule_ == s_old
    assert [h["phase"] for h in cont.history_[6:8]] == ["final", "final"]
    np.testing.assert_array_equal(cont.labels_, straight.labels_)
    np.testing.assert_allclose(cont.rot_, straight.rot_)
    # a checkpoint without a saved schedule (older versions) continues under the current defaults
    m = AbInitio(2, **kw, final_iterations=2)
    m.schedule_ = m.schedule(24)
    assert ckmod.pinned_schedule(m, None).intermediate_iterations == 8
    # an explicit count on --continue wins over the checkpoint's; the window stays within the new anneal
    m = AbInitio(2, **kw, final_iterations=0, intermediate_iterations=1)
    m.schedule_ = m.schedule(24)
    p = ckmod.pinned_schedule(m, s_old.as_dict())
    assert (p.intermediate_iterations, p.class_similarity_anneal_start, p.class_similarity_anneal_end) == (1, 2, 3)


def test_threads_leave_a_fit_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pose search's blocks and the classes' sums and volumes run in threads on the CPU; the
    same K = 2 fit in one thread gives the same poses, classes and maps to the last bit."""
    import cryoframe.algorithms.posesearch as ps_mod
    import cryoframe.backend as backend_mod

    imgs, _, ctf = _tiny(n=120, box=24)
    kw = dict(psize_A=4.0, initial_resolution_A=30.0, max_resolution_A=16.0, initial_iterations=2,
              intermediate_iterations=2, final_iterations=1, initial_minibatch=40, final_minibatch=70,
              n_starts=2, random_state=1)
    threaded = AbInitio(2, **kw).fit(imgs, ctf)
    monkeypatch.setattr(backend_mod, "available_cores", lambda: 1)  # thread_map's default
    monkeypatch.setattr(ps_mod, "available_cores", lambda: 1)
    serial = AbInitio(2, **kw).fit(imgs, ctf)
    np.testing.assert_array_equal(threaded.rot_, serial.rot_)
    np.testing.assert_array_equal(threaded.shifts_px_, serial.shifts_px_)
    np.testing.assert_array_equal(threaded.posteriors_, serial.posteriors_)
    np.testing.assert_array_equal(threaded.volumes_, serial.volumes_)


def test_projectors_are_shared_until_the_volumes_change() -> None:
    """An iteration's search and noise update, and a final pass's blocks, share each class's projector
    (its padded transform and bound); a new working volume gets a new one."""
    imgs, _, ctf = _tiny(n=60, box=24)
    m = AbInitio(2, psize_A=4.0, initial_resolution_A=30.0, max_resolution_A=16.0, initial_iterations=1,
                 intermediate_iterations=1, final_iterations=1, initial_minibatch=30, final_minibatch=40,
                 n_starts=1, final_passes=1, random_state=0).fit(imgs, ctf)
    assert "_projectors" not in m.__dict__  # not kept past the fit
    first = [m._projector(k) for k in range(2)]
    assert first[0] is not first[1] and all(m._projector(k) is first[k] for k in range(2))
    np.testing.assert_array_equal(first[1].vft, fo.volume_transform(m._volumes_w[1], m.pad))
    m._volumes_w = [v.copy() for v in m._volumes_w]
    assert all(m._projector(k) is not first[k] for k in range(2))


def test_cli_starts_option(noposes: Path) -> None:
    out = noposes / "abinit_starts.cf"
    assert cli(["-q", "abinitio", str(noposes / "clean.cf"), "--classes", "1", "--starts", "2", "--out", str(out),
                *FAST]) == 0
    model = json.loads((ParticleStore(out).extras_dir() / "model.json").read_text())
    starts = [e for e in model["empty_class_events"] if e["event"] == "starts"]
    assert len(starts) == 1 and len(starts[0]["mean_error"]) == 2 and starts[0]["iteration"] == 2
    assert len(model["history"]) == 7  # the chosen start's 2 initial iterations, not both starts'
    assert cli(["-q", "abinitio", str(noposes / "clean.cf"), "--starts", "0", "--out", str(noposes / "x.cf"),
                *FAST]) != 0
    assert not (noposes / "x.cf").exists()
