"""Statistics for subset-by-statistic: definitions, difference statistics vs SciPy, worked examples,
errors; threshold-mode subsets conserve every uid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, leftovers, save_cs
from scipy.spatial.transform import Rotation

from cryoframe import api
from cryoframe.errors import FormatError, InputError


def make_store(tmp_path: Path, name: str, rec: np.ndarray):  # noqa: ANN201
    p = tmp_path / f"{name}.cs"
    save_cs(p, rec)
    return api.import_(p, tmp_path / f"{name}.cf", metadata_only=True)


def values(store, by: str, **kw) -> np.ndarray:  # noqa: ANN001
    from cryoframe.query.stats import statistic_values

    return statistic_values(store, by, **kw)["value"].compute().to_numpy(dtype="float64")


def test_class_prob3d_worked_examples_sum_and_max(tmp_path: Path) -> None:
    rec = np.zeros(2, dtype=[("uid", "<u8"), ("alignments3D_multi/class_posterior", "<f4", (3,))])
    rec["uid"] = [11, 12]
    rec["alignments3D_multi/class_posterior"] = [[0.8, 0.1, 0.1], [0.5, 0.4, 0.1]]
    s = make_store(tmp_path, "c3d", rec)
    np.testing.assert_allclose(values(s, "class_prob3d", class_indices=[0, 1], class_agg="sum"), [0.9, 0.9], rtol=1e-6)
    np.testing.assert_allclose(values(s, "class_prob3d", class_indices=[0, 1], class_agg="max"), [0.8, 0.5], rtol=1e-6)
    for agg, kept in (("sum", [11, 12]), ("max", [11])):
        r = api.subset(s, tmp_path / f"good_{agg}", by="class_prob3d", class_indices=[0, 1], class_agg=agg,
                       mode="thresholds", thresholds=[0.75], plots=False)
        assert r.sets[1].table(["uid"]).column(0).to_pylist() == kept
    with pytest.raises(InputError, match="out of range"):
        values(s, "class_prob3d", class_indices=[0, 3])


def _pair(tmp_path: Path, n: int = 500):  # noqa: ANN202
    rng = np.random.default_rng(5)
    dt = [("uid", "<u8"), ("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,)),
          ("alignments3D/psize_A", "<f4"), ("alignments2D/pose", "<f4"), ("alignments2D/shift", "<f4", (2,)),
          ("alignments2D/psize_A", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4")]
    a = np.zeros(n, dtype=dt)
    a["uid"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64)
    a["alignments3D/pose"] = Rotation.random(n, random_state=1).as_rotvec()
    a["alignments3D/shift"] = rng.normal(0, 3, (n, 2))
    a["alignments3D/psize_A"] = 1.3
    a["alignments2D/pose"] = rng.uniform(-np.pi, np.pi, n)
    a["alignments2D/shift"] = rng.normal(0, 3, (n, 2))
    a["alignments2D/psize_A"] = 1.3
    a["ctf/df1_A"] = rng.uniform(1e4, 2e4, n)
    a["ctf/df2_A"] = a["ctf/df1_A"] + 200
    b = a.copy()
    b["alignments3D/pose"] = Rotation.random(n, random_state=2).as_rotvec()
    b["alignments3D/shift"] += rng.normal(0, 1, (n, 2))
    b["alignments2D/pose"] = rng.uniform(-np.pi, np.pi, n)
    b["alignments2D/shift"] += rng.normal(0, 1, (n, 2))
    b["ctf/df1_A"] += rng.normal(0, 100, n)
    perm = rng.permutation(n)
    return a[perm], b, make_store(tmp_path, "initial", a[perm]), make_store(tmp_path, "final", b)


def test_difference_statistics_agree_with_scipy(tmp_path: Path) -> None:
    a, b, ini, fin = _pair(tmp_path)
    ai = a[np.argsort(a["uid"])][np.searchsorted(np.sort(a["uid"]), b["uid"])]  # a aligned to b's order
    expect = np.degrees((Rotation.from_rotvec(ai["alignments3D/pose"]).inv()
                         * Rotation.from_rotvec(b["alignments3D/pose"])).magnitude())
    np.testing.assert_allclose(values(fin, "pose3d_diff", initial=ini), expect, atol=1e-4)
    d = b["alignments3D/shift"].astype(np.float64) - ai["alignments3D/shift"]
    np.testing.assert_allclose(values(fin, "shift3d_diff", initial=ini), 1.3 * np.hypot(d[:, 0], d[:, 1]), rtol=1e-5)
    dp = np.degrees(np.abs(b["alignments2D/pose"].astype(np.float64) - ai["alignments2D/pose"]))
    expect2 = np.minimum(dp % 360, 360 - dp % 360)
    got2 = values(fin, "pose2d_diff", initial=ini)
    np.testing.assert_allclose(got2, expect2, atol=1e-4)
    assert got2.min() >= 0 and got2.max() <= 180
    dd = np.abs((b["ctf/df1_A"] + b["ctf/df2_A"]) / 2.0 - (ai["ctf/df1_A"] + ai["ctf/df2_A"]) / 2.0)
    np.testing.assert_allclose(values(fin, "defocus_diff", initial=ini), dd, rtol=1e-5, atol=1e-3)
    # outputs carry the final metadata
    r = api.subset(fin, tmp_path / "moved", initial=ini, by="pose3d_diff", mode="thresholds", thresholds=[5, 20],
                   format="cs", plots=False)
    assert len(r.sets) == 3 and sum(s.n for s in r.sets) == len(b)
    out = np.load(tmp_path / "moved" / "set_002.cs")
    pos = {int(u): i for i, u in enumerate(b["uid"])}
    np.testing.assert_array_equal(out["alignments3D/pose"], b["alignments3D/pose"][[pos[int(u)] for u in out["uid"]]])


def test_single_statistics_match_their_fields(tmp_path: Path) -> None:
    s = api.synth(tmp_path / "toy.cf", n=400, box=16, classes=3, kind="3d", metadata_only=True)
    t = s.table()

    def col(f: str) -> np.ndarray:
        c = t.column(f)
        return np.stack(c.to_numpy(zero_copy_only=False)) if str(c.type).startswith("fixed") else c.to_numpy()

    np.testing.assert_allclose(values(s, "scale"), col("alignments3D/alpha_min"))
    np.testing.assert_allclose(values(s, "defocus"), (col("ctf/df1_A").astype(float) + col("ctf/df2_A")) / 2)
    np.testing.assert_allclose(values(s, "error3d"), col("alignments3D/error"))
    np.testing.assert_allclose(values(s, "location_x"), col("location/center_x_frac"))
    post = col("alignments3D_multi/class_posterior").astype(float)
    np.testing.assert_allclose(values(s, "ess3d"), col("alignments3D_multi/class_ess") if "alignments3D_multi/class_ess"
                               in s.fields else 1 / (post**2).sum(1), rtol=1e-5)
    psi = Rotation.from_rotvec(col("alignments3D/pose")).as_euler("ZYZ", degrees=True)[:, 2]
    np.testing.assert_allclose(values(s, "helical_tilt"), psi, atol=1e-3)


def test_motion_statistic_from_trajectory_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "J3" / "motion").mkdir(parents=True)
    trajs = {}
    for m in range(2):
        tr = np.cumsum(rng.normal(0, 0.5, (5, 20, 2)), axis=1).astype(np.float32)
        rel = f"J3/motion/mic{m}_traj.npy"
        np.save(tmp_path / rel, tr)
        trajs[rel] = tr
    rec = np.zeros(10, dtype=[("uid", "<u8"), ("motion/path", "S30"), ("motion/idx", "<u4"), ("motion/psize_A", "<f4")])
    rec["uid"] = np.arange(10) + 100
    rec["motion/path"] = [f"J3/motion/mic{i % 2}_traj.npy".encode() for i in range(10)]
    rec["motion/idx"] = np.arange(10) // 2
    rec["motion/psize_A"] = 0.8
    s = make_store(tmp_path, "mot", rec)
    got = values(s, "motion", project_dir=str(tmp_path))
    for i in range(10):
        tr = trajs[rec["motion/path"][i].decode()][rec["motion/idx"][i]].astype(float)
        assert got[i] == pytest.approx(0.8 * np.linalg.norm(np.diff(tr, axis=0), axis=1).sum(), rel=1e-6)
    np.save(tmp_path / "J3/motion/mic1_traj.npy", np.zeros((5, 20, 3)))
    with pytest.raises(FormatError, match="mic1_traj.npy.*layout"):
        values(s, "motion", project_dir=str(tmp_path))


def test_thresholds_conserve_every_uid(tmp_path: Path) -> None:
    s = api.synth(tmp_path / "toy.cf", n=3000, box=16, classes=3, kind="3d", metadata_only=True)
    r = api.subset(s, tmp_path / "out", by="error3d", mode="thresholds", thresholds=[9500, 10000], plots=False)
    v = values(s, "error3d")
    uids = s.table(["uid"]).column(0).to_numpy()
    seen = np.concatenate([x.table(["uid"]).column(0).to_numpy() for x in r.sets])
    assert len(seen) == len(uids) and set(seen.tolist()) == set(uids.tolist())
    for k, (lo, hi) in enumerate([(-np.inf, 9500), (9500, 10000), (10000, np.inf)]):
        exp = uids[(v >= lo) & (v < hi)]
        np.testing.assert_array_equal(r.sets[k].table(["uid"]).column(0).to_numpy(), exp)
        e = r.summary["sets"][k]
        assert e["count"] == len(exp) and e["mean"] == pytest.approx(v[(v >= lo) & (v < hi)].mean())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_input"] == 3000 and summary["n_dropped"] == 0 and len(summary["sets"]) == 3
    assert r.sets[0].lineage[-1]["op"] == "subset" and r.sets[0].images_path() is None


def test_on_missing_modes(tmp_path: Path) -> None:
    rec = np.zeros(6, dtype=[("uid", "<u8"), ("alignments3D/error", "<f4")])
    rec["uid"] = np.arange(6)
    rec["alignments3D/error"] = [1, 2, np.nan, 4, np.inf, 6]
    s = make_store(tmp_path, "nan", rec)
    with pytest.raises(InputError, match="2 of 6 particles.*alignments3D/error"):
        api.subset(s, tmp_path / "a", by="error3d", mode="thresholds", thresholds=[3], plots=False)
    assert not (tmp_path / "a").exists()
    r = api.subset(s, tmp_path / "b", by="error3d", mode="thresholds", thresholds=[3], on_missing="drop", plots=False)
    assert r.dropped.table(["uid"]).column(0).to_pylist() == [2, 4] and r.summary["n_dropped"] == 2
    r = api.subset(s, tmp_path / "c", by="error3d", mode="thresholds", thresholds=[3], on_missing="separate",
                   plots=False)
    assert r.missing.table(["uid"]).column(0).to_pylist() == [2, 4] and r.dropped is None
    assert [x.n for x in r.sets] == [2, 2]


def test_subset_errors_name_the_problem_and_write_nothing(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    _, _, ini, fin = _pair(tmp_path, 50)
    cases = [
        (["--by", "nonsense"], ["unknown statistic", "pose3d_diff"]),
        (["--by", "ncc"], ["pick_stats/ncc_score"]),
        (["--by", "defocus", "--initial", ini.path], ["--initial applies only"]),
        (["--by", "pose3d_diff"], ["difference statistic", "--initial"]),
        (["--by", "defocus", "--mode", "thresholds", "--thresholds", "5,2"], ["strictly increasing"]),
        (["--by", "defocus", "--mode", "thresholds", "--thresholds", "nan"], ["must be finite numbers"]),
        (["--by", "defocus", "--mode", "thresholds", "--thresholds", "1,inf"], ["must be finite numbers"]),
        (["--by", "defocus", "--mode", "thresholds"], ["--thresholds"]),
    ]
    for args, expect in cases:
        code, _, err = run_cli("subset", fin.path, *args, "--out", tmp_path / "o")
        assert code == 2, args
        for e in expect:
            assert e in err, (args, err)
        assert not (tmp_path / "o").exists()
    other = np.zeros(3, dtype=[("uid", "<u8"), ("alignments3D/pose", "<f4", (3,))])
    other["uid"] = [1, 2, 3]
    o = make_store(tmp_path, "other", other)
    code, _, err = run_cli("subset", fin.path, "--by", "pose3d_diff", "--initial", o.path, "--out", tmp_path / "o")
    assert code == 2 and "no uids in common" in err
    assert [p for p in leftovers(tmp_path) if p.startswith(".")] == []


def test_stats_on_real_cryosparc_tools_file(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    s = api.import_(DATA / "cryosparc-tools" / "4k_dataset.cs", tmp_path / "k.cf", metadata_only=True)
    d = api.stats(s)
    for name in ("scale", "ncc", "power", "error2d", "error3d", "class_prob2d", "ess2d", "location_x", "helical_tilt"):
        assert name in d["available"], name
    assert "defocus" not in d["available"] and "motion" not in d["available"]
    code, out, _ = run_cli("stats", s.path, "--by", "scale", "--json")
    assert code == 0 and json.loads(out)["fields"] == ["alignments3D/alpha_min"]
    with pytest.raises(InputError, match="no particle"):
        api.subset(s, tmp_path / "x", by="scale", mode="thresholds", thresholds=[1], plots=False)
