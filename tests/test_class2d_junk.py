"""Junk-laden picks: synthetic junk with truth, the class ranker and select2d --auto."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cryoframe import api
from cryoframe.algorithms.class2d.rank import (
    DEFAULT_MAX_MISFIT,
    DEFAULT_MIN_EVIDENCE,
    DEFAULT_THRESHOLD,
    class_features,
    class_scores,
)
from cryoframe.errors import InputError
from cryoframe.synthetic import JUNK_KINDS, make_particles, make_truth


def test_synth_junk_truth_and_images() -> None:
    x0, t0 = make_particles(600, box=32, snr=0.5, seed=3)
    x, t = make_particles(600, box=32, snr=0.5, seed=3, junk=0.25, return_clean=True)
    kind, view = t["junk_kind"], t["view"]
    assert set(np.unique(kind)) == set(range(len(JUNK_KINDS)))  # real + every junk kind present
    assert 0.19 < np.mean(kind > 0) < 0.31
    assert np.array_equal(view < 0, kind > 0) and np.array_equal(view[kind == 0], t["class"][kind == 0])
    real = kind == 0
    assert np.array_equal(x[real], x0[real])  # real particles are the junk-free ones, bit for bit
    assert not np.allclose(x[~real], x0[~real])
    assert np.all(t["clean"][kind == 1] == 0)  # empty picks: noise only
    # debris differs from particle to particle (one-off), edges spread to the box edge
    deb = t["clean"][kind == 2].reshape(-1, 32 * 32)
    cc = np.corrcoef(deb)[np.triu_indices(len(deb), 1)]
    assert np.median(cc) < 0.5
    g = np.arange(32) - 16
    outer = np.hypot(g[None], g[:, None]) > 10
    e2 = t["clean"] ** 2
    frac_out = e2[:, outer].sum(1) / e2.sum((1, 2)).clip(1e-12)
    assert np.median(frac_out[kind == 3]) > 2 * np.median(frac_out[real])
    # junk=0: the truth and the images are exactly those of before (no new keys)
    assert set(make_truth(10, seed=3)) == set(t0) - {"noise_sigma"}
    for bad in (-0.1, 1.0):
        with pytest.raises(InputError, match="junk"):
            make_particles(10, box=16, junk=bad)


def test_synth_cli_junk_writes_truth(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    code, _, err = run_cli("synth", "--particles", "300", "--box", "16", "--junk", "0.3", "--seed", "1",
                           "--out", tmp_path / "j.cf")
    assert code == 0, err
    s = api.open_store(tmp_path / "j.cf")
    tr = np.load(s.extras_dir() / "truth.npz")
    assert 0.2 < np.mean(tr["view"] < 0) < 0.4 and np.array_equal(tr["view"] < 0, tr["junk_kind"] > 0)
    assert json.loads((s.extras_dir() / "truth.json").read_text())["junk"] == 0.3
    t = make_truth(300, seed=1, junk=0.3)
    assert np.array_equal(tr["view"], t["view"])


def _blob(box: int, cx: float = 0, cy: float = 0, sd: float = 3.0) -> np.ndarray:
    g = np.arange(box) - box // 2
    return np.exp(-((g[None] - cx) ** 2 + (g[:, None] - cy) ** 2) / (2 * sd**2))


def test_ranker_scores_particles_above_empty_and_edge_classes() -> None:
    box = 32
    g = np.arange(box) - box // 2
    particle = _blob(box, -3, 0) + 0.7 * _blob(box, 4, 2, 2.0)
    edge = np.tanh((g[None] * 0.6 + g[:, None] * 0.8 - 4) / 2.0) * (np.hypot(g[None], g[:, None]) < 14)
    rng = np.random.default_rng(0)
    empty = 0.02 * rng.standard_normal((box, box))
    avgs = np.stack([particle, 0.9 * particle[::-1], edge, empty])
    feats = class_features(avgs, np.array([100, 80, 60, 120]), np.array([8.0, 9.0, 20.0, np.inf]),
                           np.array([3.0, 4.0, 30.0, 200.0]), psize_A=2.0, mask_radius_px=14.0)
    s = class_scores(feats)
    assert s[0] > DEFAULT_THRESHOLD and s[1] > DEFAULT_THRESHOLD, (s, feats)
    assert s[2] < DEFAULT_THRESHOLD and s[3] < DEFAULT_THRESHOLD, (s, feats)
    assert feats["compactness"][2] < feats["compactness"][0]
    assert feats["contrast"][3] < 0.1


@pytest.fixture(scope="module")
def junky(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("junk")
    s = api.synth(d / "j.cf", n=400, box=32, classes=8, snr=0.3, seed=0, junk=0.25)
    c = api.class2d(s, d / "c.cf", classes=8, iters=6, psi_step_deg=10, offset_range_px=5, offset_step_px=2,
                    seed=0, plots=False)
    return s, c


def test_auto_select_keeps_particles_and_drops_junk(junky, tmp_path: Path) -> None:  # noqa: ANN001
    s, c = junky
    model = json.loads((c.extras_dir() / "model.json").read_text())
    assert all(0 <= cl["score"] <= 1 and set(cl["features"]) == set(model["score"]["features"])
               for cl in model["classes"])
    view = np.load(s.extras_dir() / "truth.npz")["view"]
    sel = api.select2d(c, tmp_path / "auto.cf", auto=True)
    t = c.table(["uid", "alignments2D/class", "alignments2D/evidence", "alignments2D/misfit"])
    lab, ev, mf = t.column(1).to_numpy(), t.column(2).to_numpy(), t.column(3).to_numpy()
    scores = np.array([cl["score"] for cl in model["classes"]] + [0.0])  # (class 8: the outliers, never kept)
    by_class = scores[lab] >= DEFAULT_THRESHOLD
    # good classes, minus particles no better than noise and particles that do not fit their class
    keep = by_class & (ev >= DEFAULT_MIN_EVIDENCE) & (mf <= DEFAULT_MAX_MISFIT)
    assert np.array_equal(np.sort(sel.table(["uid"]).column(0).to_numpy()), np.sort(t.column(0).to_numpy()[keep]))
    junk = view < 0
    kind = np.load(s.extras_dir() / "truth.npz")["junk_kind"]
    assert keep[~junk].mean() >= 0.9, keep[~junk].mean()  # real particles are kept
    assert 1 - keep[junk].mean() >= 0.3, keep[junk].mean()  # empty picks / edges go
    # the evidence floor drops empty picks that sit in good classes, and hardly any real particle
    empty_in_good = by_class & (kind == 1)
    assert empty_in_good.sum() == 0 or not keep[empty_in_good].any() or keep[empty_in_good].mean() <= 0.2
    assert (by_class & ~keep)[~junk].mean() <= 0.03
    assert np.median(ev[kind == 1]) < DEFAULT_MIN_EVIDENCE < np.percentile(ev[~junk], 5)
    # the misfit: real particles fit their class (~N(-1, 1) measured), debris and edges leave a residual
    assert np.all(np.isfinite(mf))
    assert np.median(mf[~junk]) < -0.5 and np.percentile(mf[~junk], 95) < DEFAULT_MAX_MISFIT
    assert np.median(mf[kind == 2]) > np.median(mf[~junk]) + 1.5 and np.median(mf[kind == 3]) > DEFAULT_MAX_MISFIT
    assert 1 - keep[junk].mean() >= 0.8, keep[junk].mean()  # measured 0.88
    # --min-evidence overrides (also with --classes), and -inf-like floors keep whole classes
    loose = api.select2d(c, tmp_path / "loose.cf", auto=True, min_evidence=-1e9, max_misfit=1e9)
    assert loose.n == int(by_class.sum())
    strict = api.select2d(c, tmp_path / "strict.cf", auto=True, max_misfit=0.0)
    assert strict.n == int((by_class & (ev >= DEFAULT_MIN_EVIDENCE) & (mf <= 0.0)).sum()) < sel.n
    some = api.select2d(c, tmp_path / "some.cf", classes=[0, 1], min_evidence=10.0)
    assert some.n == int((np.isin(lab, [0, 1]) & (ev >= 10.0)).sum())
    # junk-majority classes exist and gather a good part of the junk (measured 0.76)
    maj = np.array([np.mean(junk[lab == k]) > 0.5 if (lab == k).any() else False for k in range(9)])  # 8: outliers
    assert maj[lab[junk]].mean() >= 0.6
    every = api.select2d(c, tmp_path / "all.cf", auto=True, threshold=0.0)  # --threshold overrides
    assert every.n == int(((ev >= DEFAULT_MIN_EVIDENCE) & (mf <= DEFAULT_MAX_MISFIT)).sum())
    loose_all = api.select2d(c, tmp_path / "all2.cf", auto=True, threshold=0.0, min_evidence=-1e9, max_misfit=1e9)
    assert loose_all.n == int((lab < 8).sum())  # every class but the outliers


def _junk_in_junk_classes(labels: np.ndarray, junk: np.ndarray, k: int) -> float:
    maj = np.array([np.mean(junk[labels == c]) > 0.5 if (labels == c).any() else False for c in range(k)])
    return float(maj[labels[junk]].mean())


def test_scale_prior_gathers_junk_that_a_free_scale_spreads(junky) -> None:  # noqa: ANN001
    """A free per-sample contrast scale makes the score a correlation, so junk matches every class
    (measured 0.28 / 0.17 of the junk in junk-majority classes on seeds 0 / 1); the default N(1, 0.3^2)
    scale prior with its Occam factor keeps junk in flat classes (0.76 / 0.70)."""
    from cryoframe.algorithms.class2d import Class2D
    from cryoframe.jobs.class2d import noise_groups

    s, c = junky
    junk = np.load(s.extras_dir() / "truth.npz")["view"] < 0
    default = _junk_in_junk_classes(c.table(["alignments2D/class"]).column(0).to_numpy(), junk, 9)
    free = Class2D(n_classes=8, n_iter=6, psi_step_deg=10, offset_range_px=5, offset_step_px=2, random_state=0,
                   scale_prior_sd=None, outliers=False).fit(s, groups=noise_groups(s))
    spread = _junk_in_junk_classes(free.labels_, junk, 8)
    assert default >= 0.6 and spread <= 0.45, (default, spread)
    with pytest.raises(InputError, match="scale_mode"):
        Class2D(n_classes=2, scale_mode="group").fit(s)


def test_select2d_auto_bad_input(junky, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    s, c = junky
    for th in ("1.5", "-0.1"):
        code, _, err = run_cli("select2d", c.path, "--auto", "--threshold", th, "--out", tmp_path / "x.cf")
        assert code == 2 and "[0, 1]" in err, err
        assert not (tmp_path / "x.cf").exists()
    for flag in ("--min-evidence", "--max-misfit"):
        code, _, err = run_cli("select2d", c.path, "--auto", flag, "nan", "--out", tmp_path / "x.cf")
        assert code == 2 and flag in err, err
        assert not (tmp_path / "x.cf").exists()
    # a store whose model.json has no class scores (an older class2d): clear error pointing at class2d
    import shutil

    old = tmp_path / "old.cf"
    shutil.copytree(c.path, old)
    mj = old / "extras" / "model.json"
    m = json.loads(mj.read_text())
    for cl in m["classes"]:
        cl.pop("score")
    mj.write_text(json.dumps(m))
    code, _, err = run_cli("select2d", old, "--auto", "--out", tmp_path / "y.cf")
    assert code == 2 and "class scores" in err and "class2d" in err, err
    assert not (tmp_path / "y.cf").exists()
    # a store without per-particle evidence (an older class2d): an explicit floor is refused
    import pyarrow.parquet as pq

    no_ev = tmp_path / "noev.cf"
    shutil.copytree(c.path, no_ev)
    for f in (no_ev / "metadata").rglob("*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["alignments2D/evidence", "alignments2D/misfit"]), f)
    man = json.loads((no_ev / "manifest.json").read_text())
    man["fields"] = [f for f in man["fields"] if f["name"] not in ("alignments2D/evidence", "alignments2D/misfit")]
    (no_ev / "manifest.json").write_text(json.dumps(man))
    code, _, err = run_cli("select2d", no_ev, "--classes", "0", "--min-evidence", "3", "--out", tmp_path / "w.cf")
    assert code == 2 and "alignments2D/evidence" in err and "class2d" in err, err
    assert not (tmp_path / "w.cf").exists()
    code, _, err = run_cli("select2d", no_ev, "--classes", "0", "--max-misfit", "2", "--out", tmp_path / "w.cf")
    assert code == 2 and "alignments2D/misfit" in err, err
    assert not (tmp_path / "w.cf").exists()
    code, _, err = run_cli("select2d", no_ev, "--auto", "--out", tmp_path / "v.cf")  # --auto: class scores only
    assert code == 0, err
    code, _, err = run_cli("class2d", s.path, "--classes", "401", "--out", tmp_path / "z.cf")
    assert code == 2 and "larger than the number of particles" in err
    assert not (tmp_path / "z.cf").exists()


def test_outlier_class_takes_junk_out_of_the_real_classes(junky, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    """Particles that fit no class (no evidence over an empty pick, or a low-resolution residual
    from their class) get label K and leave the averages: the real classes get purer, the outlier
    class is junk, and select2d --auto never keeps it (--classes K can)."""
    s, c = junky
    truth = np.load(s.extras_dir() / "truth.npz")
    junk, kind = truth["view"] < 0, truth["junk_kind"]
    t = c.table(["alignments2D/class", "alignments2D/evidence", "alignments2D/misfit"])
    lab, ev, mf = (t.column(i).to_numpy() for i in range(3))
    model = json.loads((c.extras_dir() / "model.json").read_text())
    out = lab == 8
    assert model["outliers"]["class"] == 8 and model["outliers"]["count"] == int(out.sum()) > 0
    assert sum(cl["count"] for cl in model["classes"]) + int(out.sum()) == s.n  # every particle counted once
    # exactly the particles beyond the limits (final pass), mostly junk, few real ones
    np.testing.assert_array_equal(out, (ev < DEFAULT_MIN_EVIDENCE) | (mf > DEFAULT_MAX_MISFIT))
    assert junk[out].mean() >= 0.7 and out[~junk].mean() <= 0.05, (junk[out].mean(), out[~junk].mean())
    assert out[kind == 1].mean() >= 0.8  # empty picks
    # without the outlier class the same run keeps junk in the real classes
    code, _, err = run_cli("-q", "class2d", s.path, "--classes", "8", "--iters", "6", "--psi-step", "10",
                           "--offset-range", "5", "--offset-step", "2", "--no-plots", "--no-outliers",
                           "--out", tmp_path / "plain.cf")
    assert code == 0, err
    plain = api.open_store(tmp_path / "plain.cf")
    lab0 = plain.table(["alignments2D/class"]).column(0).to_numpy()
    assert lab0.max() < 8 and not json.loads((plain.extras_dir() / "model.json").read_text())["outliers"]["enabled"]
    assert _junk_in_junk_classes(lab, junk, 9) > _junk_in_junk_classes(lab0, junk, 8)
    with pytest.raises(InputError, match=r"out of range 0\.\.7"):  # no outlier class in that run
        api.select2d(plain, tmp_path / "none.cf", classes=[8])
    sel = api.select2d(c, tmp_path / "auto.cf", auto=True, threshold=0.0, min_evidence=-1e9, max_misfit=1e9)
    assert sel.n == int((~out).sum())  # --auto never keeps the outliers
    assert api.select2d(c, tmp_path / "o.cf", classes=[8]).n == int(out.sum())
    with pytest.raises(InputError, match="out of range 0..8"):
        api.select2d(c, tmp_path / "bad.cf", classes=[9])


def test_small_duplicate_classes_are_closed_once_the_outlier_class_is_open() -> None:
    """A class whose average duplicates one at least twice its size (after rotation) is closed
    (prior 0): the small half of an early split of a view; similar classes of similar size stay."""
    from scipy import ndimage

    from cryoframe.algorithms.class2d import Class2D

    rng = np.random.default_rng(0)
    box = 32
    g = np.arange(box) - box // 2
    yy, xx = np.meshgrid(g, g, indexing="ij")
    view = np.exp(-((xx - 4) ** 2 + yy**2) / 8.0) + 0.7 * np.exp(-((xx + 3) ** 2 + (yy - 5) ** 2) / 5.0)
    other = np.exp(-(xx**2 + (yy + 6) ** 2) / 6.0) + np.exp(-((xx - 6) ** 2 + (yy - 2) ** 2) / 3.0)
    refs = np.stack([view, ndimage.rotate(view, 40, reshape=False, order=1), other,
                     other + 0.01 * rng.standard_normal((box, box))]).astype(np.float32)
    model = Class2D(n_classes=4)
    geo = {"K": 4, "box": box, "psize_A": 2.0, "e_max": box // 2 - 1}
    st = {"refs": refs, "priors": np.full(4, 0.25), "labels": np.repeat([0, 1, 2, 3], [100, 30, 60, 50]),
          "res_shell": np.full(4, 10), "e_data": np.asarray(box // 2 - 1)}
    assert model._merge_small_duplicates(st, geo) == [1]  # 30 members duplicate class 0's 100
    assert st["priors"][1] == 0 and st["priors"].sum() == pytest.approx(1.0)
    assert st["priors"][2] > 0 and st["priors"][3] > 0  # duplicates of similar size (60 / 50) both stay
