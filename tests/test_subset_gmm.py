"""GMM mode of subset-by-statistic: agrees with scikit-learn, sets ordered by mean, conservation
with --min-prob, outputs (summary, stores, exports, plots)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGMM

from cryoframe import api


@pytest.fixture(scope="module")
def toy(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("toy")
    return api.synth(d / "toy.cf", n=4000, box=16, classes=3, kind="3d", metadata_only=True, seed=3)


def _scale(store) -> np.ndarray:  # noqa: ANN001
    return store.table(["alignments3D/alpha_min"]).column(0).to_numpy().astype(np.float64)


def test_gmm_sets_agree_with_sklearn(toy, tmp_path: Path) -> None:  # noqa: ANN001
    r = api.subset(toy, tmp_path / "by_scale", by="scale", mode="gmm", components=2, tol=1e-8, max_iter=500)
    v = _scale(toy)
    sk = SkGMM(n_components=2, tol=1e-8, max_iter=500, random_state=0).fit(v[:, None])
    order = np.argsort(sk.means_.ravel())
    g = r.summary["gmm"]
    np.testing.assert_allclose(g["means"], sk.means_.ravel()[order], rtol=1e-5)
    np.testing.assert_allclose(g["weights"], sk.weights_[order], rtol=1e-5)
    np.testing.assert_allclose(g["variances"], sk.covariances_.ravel()[order], rtol=1e-4)
    assert g["log_likelihood"] == pytest.approx(sk.lower_bound_, rel=1e-7) and g["converged"]
    rank = np.empty(2, int)
    rank[order] = [0, 1]
    sk_labels = rank[sk.predict(v[:, None])]
    uids = toy.table(["uid"]).column(0).to_numpy()
    for k in range(2):
        np.testing.assert_array_equal(r.sets[k].table(["uid"]).column(0).to_numpy(), uids[sk_labels == k])
    # truth: the synthetic scale mixture is 30% junk near 0.6 and 70% good near 1.0
    assert g["means"][0] == pytest.approx(0.6, abs=0.03) and g["means"][1] == pytest.approx(1.0, abs=0.03)
    assert g["weights"][0] == pytest.approx(0.3, abs=0.03)


def test_min_prob_conserves_every_uid_and_reports_dropped(toy, tmp_path: Path) -> None:  # noqa: ANN001
    r = api.subset(toy, tmp_path / "confident", by="scale", mode="gmm", components=3, min_prob=0.8, format="star")
    uids = toy.table(["uid"]).column(0).to_numpy()
    parts = [s.table(["uid"]).column(0).to_numpy() for s in r.sets] + [r.dropped.table(["uid"]).column(0).to_numpy()]
    allu = np.concatenate(parts)
    assert len(allu) == len(uids) and len(np.unique(allu)) == len(uids) and set(allu.tolist()) == set(uids.tolist())
    s = r.summary
    assert s["n_dropped"] == r.dropped.n > 0 and s["n_dropped_min_prob"] == s["n_dropped"]
    means = [e["mean"] for e in s["sets"]]
    assert means == sorted(means)
    assert [e["count"] for e in s["sets"]] == [x.n for x in r.sets]
    for e in s["sets"]:
        assert (tmp_path / "confident" / e["export"]).exists()
    on_disk = json.loads((tmp_path / "confident" / "summary.json").read_text())
    assert on_disk["gmm"]["n_iter"] == s["gmm"]["n_iter"] and on_disk["n_input"] == 4000
    assert (tmp_path / "confident" / "plots" / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "confident" / "plots" / "viewing_set_000.html").exists()


def test_gmm_seeded_is_reproducible_and_cli_matches_api(toy, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    a = api.subset(toy, tmp_path / "a", by="error3d", components=2, seed=4, plots=False)
    code, out, err = run_cli("subset", toy.path, "--by", "error3d", "--components", "2", "--seed", "4", "--no-plots",
                             "--out", tmp_path / "b")
    assert code == 0, err
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    timing = ("fit_seconds",)  # the fit's own wall time differs run to run
    assert {k: v for k, v in b["gmm"].items() if k not in timing} == \
        {k: v for k, v in a.summary["gmm"].items() if k not in timing} and b["gmm"]["fit_seconds"] > 0 and [e["count"] for e in b["sets"]] == [e["count"] for e in a.summary["sets"]]
    assert "set 0" in out and "GMM" in out


def test_more_components_than_distinct_values(tmp_path: Path) -> None:
    from conftest import save_cs

    rec = np.zeros(50, dtype=[("uid", "<u8"), ("alignments3D/alpha", "<f4")])
    rec["uid"] = np.arange(50)
    rec["alignments3D/alpha"] = np.tile([1.0, 2.0], 25)
    save_cs(tmp_path / "two.cs", rec)
    s = api.import_(tmp_path / "two.cs", tmp_path / "two.cf", metadata_only=True)
    from cryoframe.errors import InputError

    with pytest.raises(InputError, match="distinct"):
        api.subset(s, tmp_path / "x", by="scale", components=3)
    assert not (tmp_path / "x").exists()
    r = api.subset(s, tmp_path / "ok", by="scale", components=2, plots=False)  # falls back from alpha_min to alpha
    assert [x.n for x in r.sets] == [25, 25]
