"""`class2d --continue` takes the first run's options from its checkpoint (as RELION's --continue
reads its optimiser file); only an option given explicitly and differing is refused.  `select2d`
through the CLI, including an `--auto` threshold that rejects classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryoframe import api
from cryoframe.algorithms.class2d.rank import DEFAULT_MAX_MISFIT, DEFAULT_MIN_EVIDENCE
from cryoframe.jobs.class2d import class_scores

FIRST = ["--classes", "3", "--iters", "2", "--T", "3", "--psi-step", "30", "--offset-range", "2",
         "--offset-step", "2", "--mask-diameter", "40", "--seed", "5", "--no-plots"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # noqa: ANN001, ANN201
    from cryoframe.cli import main

    d = tmp_path_factory.mktemp("c2dc")
    assert main(["-q", "synth", "--particles", "200", "--box", "32", "--classes", "2",
                 "--out", str(d / "p.cf")]) == 0
    return d


def test_continue_as_in_the_readme_takes_options_from_the_checkpoint(tiny, run_cli, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tiny)
    code, _, err = run_cli("-q", "class2d", "p.cf", *FIRST, "--out", "c2d.cf")
    assert code == 0, err
    code, _, err = run_cli("-q", "class2d", "c2d.cf", "--continue", "--iters", "4", "--out", "c2d.cf")  # as README
    assert code == 0, err
    s = api.open_store(tiny / "c2d.cf")
    model = json.loads((s.extras_dir() / "model.json").read_text())
    assert model["n_classes"] == 3
    assert [h["iteration"] for h in model["history"]] == [1, 2, 3, 4]
    assert (s.extras_dir() / "class_gallery.png").is_file() and (s.extras_dir() / "convergence.png").is_file()
    last = s.lineage[-1]["params"]
    assert (last["classes"], last["tau_fudge"], last["psi_step_deg"], last["mask_diameter_A"], last["seed"]) == \
        (3, 3.0, 30.0, 40.0, 5)
    # an option given explicitly and equal to the checkpoint's is accepted
    code, _, err = run_cli("-q", "class2d", "c2d.cf", "--continue", "--iters", "5", "--classes", "3", "--no-plots",
                           "--out", "c2d.cf")
    assert code == 0, err
    # an explicit, differing option is refused, naming it; nothing is written
    before = (tiny / "c2d.cf" / "manifest.json").read_text()
    for opt, val in (("--classes", "7"), ("--T", "2"), ("--algorithm", "vdam")):
        code, _, err = run_cli("class2d", "c2d.cf", "--continue", "--iters", "6", opt, val, "--out", "c2d.cf")
        assert code == 2 and opt in err, err
    code, _, err = run_cli("class2d", "c2d.cf", "--continue", "--iters", "6", "--no-ctf", "--out", "c2d.cf")
    assert code == 2 and "--no-ctf" in err, err
    assert (tiny / "c2d.cf" / "manifest.json").read_text() == before


def test_select2d_cli_auto_rejects_low_scoring_classes(tiny, run_cli) -> None:  # noqa: ANN001
    out = tiny / "sel_src.cf"
    code, _, err = run_cli("-q", "class2d", tiny / "p.cf", *FIRST, "--out", out)
    assert code == 0, err
    s = api.open_store(out)
    model = json.loads((s.extras_dir() / "model.json").read_text())
    scores = np.array(class_scores(model))
    assert len(set(np.round(scores, 9))) > 1
    thr = float(np.sort(scores)[-1])  # only the best class(es) pass
    keep_cls = np.nonzero(scores >= thr)[0]
    assert 0 < len(keep_cls) < model["n_classes"]
    t = s.table(["uid", "alignments2D/class", "alignments2D/evidence", "alignments2D/misfit"])
    lab, ev, mf = (t.column(i).to_numpy() for i in (1, 2, 3))
    # --auto also applies the per-particle limits (evidence over an empty pick, misfit to the class)
    passes = (ev >= DEFAULT_MIN_EVIDENCE) & (mf <= DEFAULT_MAX_MISFIT)
    want = np.sort(t.column(0).to_numpy()[np.isin(lab, keep_cls) & passes])
    code, _, err = run_cli("-q", "select2d", out, "--auto", "--threshold", repr(thr), "--out", tiny / "auto.cf")
    assert code == 0, err
    got = np.sort(api.open_store(tiny / "auto.cf").table(["uid"]).column(0).to_numpy())
    np.testing.assert_array_equal(got, want)
    assert 0 < len(got) < s.n
    code, _, err = run_cli("-q", "select2d", out, "--classes", "0,2", "--out", tiny / "man.cf")
    assert code == 0, err
    got = np.sort(api.open_store(tiny / "man.cf").table(["uid"]).column(0).to_numpy())
    np.testing.assert_array_equal(got, np.sort(t.column(0).to_numpy()[np.isin(lab, [0, 2])]))
