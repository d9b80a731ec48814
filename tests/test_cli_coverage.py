"""CLI flags end to end: export (--format cs, --relion-only, --images), subset (--min-prob,
--on-missing, --class-indices, --class-agg, --format) and class2d (--algorithm vdam, --init msa,
--ctf-mode flip, --no-center, --limit-e-step-resolution); every check reads the written files."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from conftest import make_cs_project, save_cs

from cryoframe import api


@pytest.fixture(scope="module")
def img_store(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("cli")
    return api.synth(d / "s.cf", n=200, box=32, classes=3, snr=1.0, seed=5, kind="2d")


def _uids(store) -> np.ndarray:  # noqa: ANN001
    return store.table(["uid"]).column("uid").to_numpy()


# --- export --------------------------------------------------------------------------------------------
def test_export_format_cs_with_images_round_trips(img_store, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / "parts.dat"  # suffix says nothing: --format decides
    code, _, err = run_cli("export", img_store.path, "--format", "cs", "--images", "--out", out)
    assert code == 0, err
    rec = np.load(out)  # a .cs file is a NumPy structured array
    t = img_store.table()
    np.testing.assert_array_equal(rec["uid"], t.column("uid").to_numpy())
    np.testing.assert_array_equal(rec["ctf/df1_A"], t.column("ctf/df1_A").to_numpy())
    stack = tmp_path / "parts_particles.mrcs"
    assert set(rec["blob/path"]) == {stack.name.encode()}
    np.testing.assert_array_equal(rec["blob/idx"], np.arange(img_store.n))
    imgs = img_store.read_images(0, img_store.n)
    np.testing.assert_array_equal(mrcfile.read(stack), imgs)
    cs = out.rename(tmp_path / "parts.cs")  # only a .cs name imports as cryoSPARC
    back = api.import_(cs, tmp_path / "back.cf", project_dir=tmp_path)
    np.testing.assert_array_equal(_uids(back), _uids(img_store))
    np.testing.assert_array_equal(back.read_images(0, back.n), imgs)
    np.testing.assert_array_equal(back.table(["ctf/df2_A"]).column("ctf/df2_A").to_numpy(),
                                  t.column("ctf/df2_A").to_numpy())


def test_export_star_relion_only_and_images(img_store, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    full, rel = tmp_path / "full.star", tmp_path / "rel.star"
    assert run_cli("export", img_store.path, "--out", full, "--images")[0] == 0
    code, _, err = run_cli("export", img_store.path, "--format", "star", "--relion-only", "--out", rel, "--images")
    assert code == 0, err
    pf = starfile.read(full, always_dict=True)["particles"]
    pr = starfile.read(rel, always_dict=True)["particles"]
    assert any(c.startswith("_") for c in pf.columns) and "_uid" in pf.columns
    assert all(c.startswith("rln") for c in pr.columns), [c for c in pr.columns if not c.startswith("rln")]
    t = img_store.table()
    np.testing.assert_allclose(pr["rlnDefocusU"], t.column("ctf/df1_A").to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(pr["rlnDefocusV"], t.column("ctf/df2_A").to_numpy(), rtol=1e-6)
    # --images: rlnImageName points into <stem>.mrcs, which holds the store's images in row order
    idx = pr["rlnImageName"].str.split("@").str[0].astype(int).to_numpy() - 1
    names = set(pr["rlnImageName"].str.split("@").str[1])
    assert names == {"rel.mrcs"}
    stack = mrcfile.read(tmp_path / "rel.mrcs")
    np.testing.assert_array_equal(stack[idx], img_store.read_images(0, img_store.n))
    # the full export re-imports to the same uids and values; the RELION-only one gets fresh uids
    a = api.import_(full, tmp_path / "a.cf", project_dir=tmp_path)
    np.testing.assert_array_equal(_uids(a), _uids(img_store))
    np.testing.assert_array_equal(a.read_images(0, a.n), img_store.read_images(0, img_store.n))
    b = api.import_(rel, tmp_path / "b.cf", metadata_only=True)
    assert b.n == img_store.n and not np.array_equal(_uids(b), _uids(img_store))


# --- subset --------------------------------------------------------------------------------------------
@pytest.fixture
def cs_store(tmp_path: Path):  # noqa: ANN201
    """60 particles with a 3-class posterior; alignments3D/alpha is NaN for 6 of them."""
    p = make_cs_project(tmp_path / "P", n=60, seed=4)
    rec = np.load(p.main)
    rec["alignments3D/alpha"] = np.random.default_rng(4).normal(1.0, 0.2, len(rec)).astype(np.float32)
    rec["alignments3D/alpha"][:30] -= 0.6  # two populations
    rec["alignments3D/alpha"][::10] = np.nan
    save_cs(p.main, rec)
    return api.import_(p.main, tmp_path / "j.cf", metadata_only=True)


def _sets(out: Path) -> tuple[dict[str, np.ndarray], dict]:
    summary = json.loads((out / "summary.json").read_text())
    sets = {e["path"]: _uids(api.open_store(out / e["path"])) for e in summary["sets"]}
    for extra in ("dropped_path", "missing_path"):
        if summary[extra]:
            sets[summary[extra]] = _uids(api.open_store(out / summary[extra]))
    return sets, summary


def _conserved(sets: dict[str, np.ndarray], store) -> None:  # noqa: ANN001
    allu = np.concatenate(list(sets.values()))
    assert len(allu) == store.n and set(allu.tolist()) == set(_uids(store).tolist())  # each uid exactly once


def test_subset_class_prob3d_indices_agg_and_format(cs_store, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / "sub"
    code, _, err = run_cli("subset", cs_store.path, "--by", "class_prob3d", "--class-indices", "0,2",
                           "--class-agg", "max", "--mode", "thresholds", "--thresholds", "0.4",
                           "--format", "star", "--no-plots", "--out", out)
    assert code == 0, err
    sets, summary = _sets(out)
    _conserved(sets, cs_store)
    t = cs_store.table(["uid", "alignments3D_multi/class_posterior"])
    post = np.stack(t.column(1).to_numpy(zero_copy_only=False))
    value = dict(zip(t.column(0).to_numpy().tolist(), post[:, [0, 2]].max(axis=1), strict=True))
    assert all(value[u] < 0.4 for u in sets["set_000.cf"]) and all(value[u] >= 0.4 for u in sets["set_001.cf"])
    assert len(sets["set_000.cf"]) and len(sets["set_001.cf"])
    for e in summary["sets"]:  # --format star: one .star per set with that set's particles
        part = starfile.read(out / e["export"], always_dict=True)["particles"]
        assert sorted(part["_uid"].astype(np.uint64)) == sorted(sets[e["path"]].tolist())
    assert summary["parameters"]["class_indices"] == [0, 2] and summary["parameters"]["class_agg"] == "max"


def test_subset_min_prob_and_on_missing(cs_store, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    from scipy.stats import norm

    code, _, err = run_cli("subset", cs_store.path, "--by", "scale", "--out", tmp_path / "e", "--no-plots")
    assert code == 2 and "--on-missing" in err and not (tmp_path / "e").exists()
    t = cs_store.table(["uid", "alignments3D/alpha"])
    val = dict(zip(t.column(0).to_numpy().tolist(), t.column(1).to_numpy().astype(np.float64), strict=True))
    nan = {u for u, v in val.items() if np.isnan(v)}
    assert len(nan) == 6
    for mode in ("separate", "drop"):
        out = tmp_path / mode
        code, _, err = run_cli("subset", cs_store.path, "--by", "scale", "--components", "2", "--min-prob", "0.95",
                               "--on-missing", mode, "--no-plots", "--out", out)
        assert code == 0, err
        sets, summary = _sets(out)
        _conserved(sets, cs_store)
        if mode == "separate":
            assert set(sets["missing.cf"].tolist()) == nan and summary["n_missing"] == 6
            dropped = set(sets.get("dropped.cf", np.empty(0)).tolist())
        else:
            assert summary["missing_path"] is None
            dropped = set(sets["dropped.cf"].tolist())
            assert nan <= dropped
            dropped -= nan
        # the posterior from the recorded mixture: dropped <=> best component probability < 0.95
        g = summary["gmm"]
        for name, uids in sets.items():
            for u in uids.tolist():
                if u in nan:
                    continue
                p = np.array(g["weights"]) * norm.pdf(val[u], g["means"], np.sqrt(g["variances"]))
                p /= p.sum()
                if name.startswith("set_"):
                    assert p.max() >= 0.95 - 1e-6 and int(name[4:7]) == int(p.argmax()), (name, val[u], p)
                else:
                    assert u in dropped and p.max() < 0.95 + 1e-6
        assert summary["n_dropped_min_prob"] == len(dropped) > 0


# --- class2d --------------------------------------------------------------------------------------------
def test_class2d_flags_reach_the_algorithm(tmp_path: Path, run_cli, monkeypatch) -> None:  # noqa: ANN001
    from cryoframe.algorithms.class2d import Class2D, estep
    from cryoframe.algorithms.class2d import init as ini

    s = api.synth(tmp_path / "s.cf", n=300, box=32, classes=3, snr=1.0, seed=8, kind="2d")
    seen: dict[str, list] = {"msa": [], "flip": [], "fit": []}
    real_msa, real_ctf, real_fit = ini.msa_groups, estep.ctf_half, Class2D.fit

    def msa(*a, **k):  # noqa: ANN002, ANN003, ANN202
        seen["msa"].append(1)
        return real_msa(*a, **k)

    def ctf_half(xp, box, psize, p):  # noqa: ANN001, ANN202
        seen["flip"].append(p.get("flip_phases") is not None and bool(np.all(np.asarray(p["flip_phases"]) > 0)))
        return real_ctf(xp, box, psize, p)

    def fit(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["fit"].append(self.get_params())
        return real_fit(self, *a, **k)

    monkeypatch.setattr(ini, "msa_groups", msa)
    monkeypatch.setattr(estep, "ctf_half", ctf_half)
    monkeypatch.setattr(Class2D, "fit", fit)
    out = tmp_path / "c.cf"
    code, _, err = run_cli("-q", "class2d", s.path, "--classes", "3", "--iters", "2", "--psi-step", "30",
                           "--offset-range", "2", "--algorithm", "vdam", "--init", "msa", "--ctf-mode", "flip",
                           "--no-center", "--limit-e-step-resolution", "16", "--no-plots", "--out", out, "--seed", "3")
    assert code == 0, err
    c = api.open_store(out)
    params = c.lineage[-1]["params"]
    assert (params["algorithm"], params["init"], params["ctf_mode"], params["center"],
            params["limit_e_step_resolution_A"]) == ("vdam", "msa", "flip", False, 16.0)
    est = seen["fit"][0]
    assert (est["algorithm"], est["init"], est["ctf_mode"], est["center"], est["limit_e_step_resolution_A"]) == \
        ("vdam", "msa", "flip", False, 16.0)
    assert seen["msa"], "--init msa did not run the MSA initialisation"
    assert seen["flip"] and all(seen["flip"]), "--ctf-mode flip did not reach the CTF"
    model = json.loads((c.extras_dir() / "model.json").read_text())
    hist = model["history"]
    assert len(hist) == 2 and hist[0]["n_particles"] < s.n  # VDAM: a minibatch first
    assert all(h["e_step_resolution_A"] >= 16.0 - 1e-9 for h in hist)  # 32 px x 2 Å / 16 Å: shell 4
    lab = c.table(["alignments2D/class"]).column(0).to_numpy()
    assert lab.min() >= 0 and lab.max() <= 2 and c.n == s.n
    post = c.table(["alignments2D/class_posterior"]).column(0).to_numpy()
    assert np.all(np.isfinite(post)) and np.all((post >= 0) & (post <= 1))


# --- --seed -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["abinitio", "class2d", "class3d", "demo", "project", "reconstruct", "subset", "synth"])
@pytest.mark.parametrize("seed, msg", [("-1", "the seed must be an integer in 0 .. 4294967295 (got -1)"),
                                       ("4294967296", "the seed must be an integer in 0 .. 4294967295 (got 4294967296)"),
                                       ("x", "expected an integer, got 'x'")])
def test_seed_outside_the_generators_range_is_one_argument_error(verb: str, seed: str, msg: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A negative seed was a NumPy ValueError traceback from inside the job (exit 1); now argparse's
    one error line names the option, exit 2, before anything runs."""
    from cryoframe.cli import main

    with pytest.raises(SystemExit) as e:
        main([verb, "--seed", seed])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"cryoframe {verb}: error: argument --seed: {msg}"
    assert not list(tmp_path.iterdir())


def test_seed_type_accepts_the_generators_range() -> None:
    from cryoframe.cli import seed_type
    from cryoframe.errors import InputError
    from cryoframe.types import check_seed

    assert seed_type("0") == 0 and seed_type("4294967295") == 2**32 - 1
    assert check_seed(np.int64(7)) == 7 and type(check_seed(np.uint32(7))) is int
    for bad in (-1, 2**32, 1.5, "3", True, None):
        with pytest.raises(InputError, match="seed must be an integer in 0 .. 4294967295"):
            check_seed(bad)


@pytest.mark.parametrize("verb", ["class3d", "reconstruct"])
@pytest.mark.parametrize("size", ["0", "-5"])
def test_partition_size_below_one_is_one_argument_error(verb: str, size: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``--partition-size 0`` divided by zero inside class3d; reconstruct ran on it silently."""
    from cryoframe.cli import main

    with pytest.raises(SystemExit) as e:
        main([verb, "store.cf", "--out", "o.cf", "--partition-size", size])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"cryoframe {verb}: error: argument --partition-size: must be >= 1, got {size}")


@pytest.mark.parametrize("call", [
    lambda d: api.synth(d / "s.cf", 10, seed=-1),
    lambda d: api.demo(d, seed=-1),
    lambda d: api.subset(d / "in.cf", d / "o", by="defocus", seed=-1),
    lambda d: api.class2d(d / "in.cf", d / "o.cf", seed=2**32),
    lambda d: api.reconstruct(d / "in.cf", d / "o.cf", seed=-1),
    lambda d: api.project(d / "map.mrc", d / "o.cf", n=5, seed=-1),
    lambda d: api.class3d(d / "in.cf", d / "o.cf", seed=-1),
    lambda d: api.abinitio(d / "in.cf", d / "o.cf", seed=-1),
    lambda d: api.class3d(d / "in.cf", d / "o.cf", partition_size=0),
    lambda d: api.reconstruct(d / "in.cf", d / "o.cf", partition_size=-5),
])
def test_api_checks_seed_and_partition_size_first(call, tmp_path: Path) -> None:  # noqa: ANN001
    """The API raises the same clear InputError as the CLI, before it opens anything (the inputs here
    do not even exist) and writes nothing."""
    from cryoframe.errors import InputError

    with pytest.raises(InputError, match=r"(seed must be an integer in 0 \.\. 4294967295|partition_size must be an "
                                         r"integer >= 1) \(got"):
        call(tmp_path)
    assert not list(tmp_path.iterdir())


def test_api_seed_accepts_numpy_integers(tmp_path: Path) -> None:
    s = api.synth(tmp_path / "s.cf", 10, box=16, seed=np.int64(3), metadata_only=True)
    assert s.n == 10


def test_abinitio_estimator_checks_its_seed() -> None:
    from cryoframe.algorithms.abinitio import AbInitio
    from cryoframe.errors import InputError

    with pytest.raises(InputError, match=r"--seed must be an integer in 0 \.\. 4294967295 \(got -1\)"):
        AbInitio(1, psize_A=2.0, random_state=-1)._validate(100, 32)
    AbInitio(1, psize_A=2.0, random_state=np.int64(3))._validate(100, 32)
