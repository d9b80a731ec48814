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


def _png_shape(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_plots_from_the_worker_process_equal_the_in_process_ones(toy, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    a = api.subset(toy, tmp_path / "worker", by="scale", components=2)
    monkeypatch.setenv("CRYOFRAME_PLOT_INPROCESS", "1")
    b = api.subset(toy, tmp_path / "inproc", by="scale", components=2)
    assert a.summary["plots"] == b.summary["plots"] and "viewing_set_001.png" in a.summary["plots"]
    for name in a.summary["plots"]:
        pa_, pb = tmp_path / "worker" / "plots" / name, tmp_path / "inproc" / "plots" / name
        if name.endswith(".png"):
            assert _png_shape(pa_) == _png_shape(pb)
        else:  # the plotted numbers travel in the page: the histogram's counts are every particle
            data = json.loads(pa_.read_text().split("id='data'>")[1].split("</script>")[0])
            assert data == json.loads(pb.read_text().split("id='data'>")[1].split("</script>")[0])
            if name == "histogram.html":
                assert sum(data["counts"]) == toy.n and data["gmm"]["means"] == a.summary["gmm"]["means"]
    assert a.model.predict(_scale(toy)).shape == (toy.n,)  # the fit as a scikit-learn-style estimator


def test_a_failing_plot_worker_fails_the_job_and_writes_nothing(toy, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from cryoframe.plot import quick

    def broken(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("no display for you")

    monkeypatch.setenv("CRYOFRAME_PLOT_INPROCESS", "1")
    monkeypatch.setattr(quick, "histogram_png", broken)
    with pytest.raises(RuntimeError, match="no display"):
        api.subset(toy, tmp_path / "x", by="scale", components=2)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_worker_process_error_is_reported_with_its_message(tmp_path: Path) -> None:
    from cryoframe.plot.worker import PlotWorker

    with PlotWorker() as w:  # a histogram whose stem is in a folder that does not exist
        w.add("histogram_png", stem=tmp_path / "missing" / "h", counts=np.ones(3), edges=np.arange(4.0), xlabel="x")
        with pytest.raises(RuntimeError, match="plot worker failed: .*(No such file|FileNotFound)"):
            w.wait()
    with pytest.raises(ValueError, match="unknown plot function"):
        PlotWorker().add("os.system", cmd="true")


def test_subset_cli_process_imports_no_sklearn_pandas_dask_or_matplotlib(toy, tmp_path: Path) -> None:  # noqa: ANN001
    # start-up is most of a subset's wall time: the fit is NumPy only and matplotlib runs in the plot worker
    import subprocess
    import sys

    code = ("import sys; from cryoframe.cli import main; rc = main(['-q', 'subset', sys.argv[1], '--by', 'scale', "
            "'--out', sys.argv[2]]); print(sorted(m for m in ('sklearn', 'pandas', 'dask', 'matplotlib', 'numba', "
            "'scipy') if m in sys.modules)); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(toy.path), str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "o" / "plots" / "histogram.png").exists()


def test_plot_worker_that_cannot_import_draws_in_process(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import sys

    from cryoframe.plot import worker as pw

    # a worker interpreter that fails to import (an environment where the child cannot import cryoframe)
    monkeypatch.setattr(pw, "_spawn", lambda: pw.subprocess.Popen(
        [sys.executable, "-c", "import no_such_module_cf"], stdin=pw.subprocess.PIPE, stdout=pw.subprocess.PIPE,
        stderr=pw.subprocess.PIPE))
    with pw.PlotWorker() as w:
        w.add("histogram_png", stem=tmp_path / "h", counts=np.ones(3), edges=np.arange(4.0), xlabel="x")
        assert w.wait() == ["h.png", "h.html"]
    assert _png_shape(tmp_path / "h.png")[0] > 100
