"""The class2d / select2d verbs: outputs, resume, exports, selection and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryoframe import api
from cryoframe.errors import InputError

ARGS = ["--classes", "3", "--iters", "3", "--psi-step", "30", "--offset-range", "2", "--no-plots"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("c2d")
    return api.synth(d / "toy.cf", n=240, box=24, classes=3, snr=1.0, seed=2, kind="2d")


def test_class2d_outputs_and_exports(toy, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / "c2d.cf"
    code, stdout, err = run_cli("-q", "class2d", toy.path, *ARGS, "--out", out)
    assert code == 0, err
    s = api.open_store(out)
    assert s.n == 240 and s.images_path() == toy.images_path()
    t = s.table()
    lab = t.column("alignments2D/class").to_numpy()
    assert lab.dtype == np.uint32 and set(np.unique(lab)) <= {0, 1, 2}
    post = t.column("alignments2D/class_posterior").to_numpy()
    assert np.all((post >= 0) & (post <= 1))
    assert t.schema.field("alignments2D/shift").type.list_size == 2
    ex = s.extras_dir()
    model = json.loads((ex / "model.json").read_text())
    assert model["n_classes"] == 3 and sum(c["count"] for c in model["classes"]) == 240
    assert len(model["history"]) == 3
    import mrcfile
    import zarr

    avgs = zarr.open_array(str(ex / "class_averages.zarr"), mode="r")[:]
    assert avgs.shape == (3, 24, 24)
    np.testing.assert_array_equal(mrcfile.read(ex / "class_averages.mrcs"), avgs)
    star = api.export(s, tmp_path / "c2d.star")
    part = starfile.read(star, always_dict=True)["particles"]
    np.testing.assert_array_equal(part["rlnClassNumber"], lab.astype(int) + 1)
    np.testing.assert_allclose(part["rlnAnglePsi"], np.rad2deg(t.column("alignments2D/pose").to_numpy()), atol=1e-4)
    for c in ("rlnOriginXAngst", "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples"):
        assert c in part.columns


def test_continue_resumes_and_select(toy, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / "c.cf"
    assert run_cli("-q", "class2d", toy.path, *ARGS, "--out", out)[0] == 0
    args = [a if a != "3" or i != 3 else "5" for i, a in enumerate(ARGS)]  # --iters 5
    code, _, err = run_cli("-q", "class2d", out, *args, "--continue", "--out", out)
    assert code == 0, err
    s = api.open_store(out)
    assert [st["op"] for st in s.lineage] == ["synth", "class2d", "class2d"]
    assert len(json.loads((s.extras_dir() / "model.json").read_text())["history"]) == 5
    lab = s.table(["alignments2D/class"]).column(0).to_numpy()
    sel = api.select2d(s, tmp_path / "g.cf", classes=[0, 2])
    assert sel.n == int(np.isin(lab, [0, 2]).sum())
    # threshold 0 keeps every class, the per-particle limits off every particle in them; not the
    # outlier class (label 3: from the 5th iteration, particles that fit no class -- here those whose true
    # shift is beyond this run's 2 px search)
    auto = api.select2d(s, tmp_path / "a.cf", auto=True, threshold=0.0, min_evidence=-1e9, max_misfit=1e9)
    assert auto.n == int((lab < 3).sum()) and lab.max() <= 3


def test_class2d_bad_input(toy, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    cases = [
        (["--classes", "1000"], "larger than the number of particles"),
        (["--classes", "3", "--mask-diameter", "500"], "larger than the box"),
        (["--classes", "3", "--continue"], "checkpoint"),
    ]
    for args, msg in cases:
        code, _, err = run_cli("class2d", toy.path, *args, "--out", tmp_path / "x.cf")
        assert code == 2 and msg in err, err
        assert not (tmp_path / "x.cf").exists()
    meta = api.synth(tmp_path / "meta.cf", n=50, box=16, metadata_only=True)
    code, _, err = run_cli("class2d", meta.path, "--classes", "2", "--out", tmp_path / "y.cf")
    assert code == 2 and "images" in err
    with pytest.raises(InputError, match="no 2D classification"):
        api.select2d(toy, tmp_path / "z.cf", classes=[0])


def test_ctf_needs_ctf_fields(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    import shutil

    from conftest import DATA

    src = tmp_path / "m.mrcs"
    shutil.copy(DATA / "mrcfile" / "EMD-3197.map", src)
    s = api.import_(src, tmp_path / "m.cf")
    code, _, err = run_cli("class2d", s.path, "--classes", "2", "--out", tmp_path / "o.cf")
    assert code == 2 and "ctf/df1_A" in err and "--no-ctf" in err
    code, _, err = run_cli("-q", "class2d", s.path, "--classes", "2", "--iters", "1", "--psi-step", "45",
                           "--offset-range", "1", "--no-ctf", "--no-plots", "--out", tmp_path / "o.cf")
    assert code == 0, err


def test_select_with_regroup_writes_groups_of_similar_defocus(toy, tmp_path: Path) -> None:  # noqa: ANN001
    s = api.class2d(toy, tmp_path / "c.cf", classes=3, iters=2, psi_step_deg=30, offset_range_px=2, plots=False)
    g = api.select2d(s, tmp_path / "g.cf", classes=[0, 1, 2], regroup=6)
    t = g.table()
    groups = t.column("rlnGroupNumber").to_numpy()
    assert g.n == s.n and sorted(set(groups.tolist())) == [1, 2, 3, 4, 5, 6]
    counts = np.bincount(groups)[1:]
    assert counts.max() - counts.min() <= 2
    df = (t.column("ctf/df1_A").to_numpy() + t.column("ctf/df2_A").to_numpy()) / 2
    spread = np.mean([df[groups == k].std() for k in range(1, 7)])
    assert spread < df.std()  # groups are more homogeneous in defocus than the whole set
    part = starfile.read(api.export(g, tmp_path / "g.star"), always_dict=True)["particles"]
    np.testing.assert_array_equal(part["rlnGroupNumber"], groups)
    # classifying the regrouped store estimates one noise spectrum per group (phase flipping, no zero mask)
    c = api.class2d(g, tmp_path / "c2.cf", classes=3, iters=1, psi_step_deg=30, offset_range_px=2, plots=False,
                    ctf_mode="flip", zero_mask=False)
    model = json.loads((c.extras_dir() / "model.json").read_text())
    assert model["noise"]["groups"] == 6 and len(model["noise"]["spectrum"]) == 12
    assert {"ctf_mode": "flip", "zero_mask": False}.items() <= c.lineage[-1]["params"].items()
    # --regroup 0 silently meant "no regrouping" while -3 was an error: both are errors now, nothing written
    for bad in (0, -3):
        with pytest.raises(InputError, match=f"--regroup must be at least 1, not {bad}"):
            api.select2d(s, tmp_path / "bad.cf", classes=[0], regroup=bad)
        assert not (tmp_path / "bad.cf").exists()


def test_class2d_on_a_process_cluster_equals_threads(toy, tmp_path: Path) -> None:  # noqa: ANN001
    """The same seeded run on a distributed LocalCluster (2 worker processes) and on threads."""
    kw = {"classes": 3, "iters": 2, "psi_step_deg": 30, "offset_range_px": 2, "plots": False}
    a = api.class2d(toy, tmp_path / "t.cf", scheduler="threads", **kw)
    b = api.class2d(toy, tmp_path / "p.cf", scheduler="local:2", **kw)
    cols = ["alignments2D/class", "alignments2D/pose", "alignments2D/shift"]
    assert a.table(cols).equals(b.table(cols))
