"""3D classification: accuracy on synthetic K-state data, outputs, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryoframe import api
from cryoframe.cli import main as cli
from cryoframe.errors import InputError
from cryoframe.storage.store import ParticleStore
from cryoframe.testing.states3d import write_state_store

N, BOX, K = 450, 32, 3


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    d = tmp_path_factory.mktemp("c3d")
    truth = write_state_store(d / "in.cf", N, BOX, K, snr=1.0, seed=1)
    return d, truth


def _ari(a, b):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


def test_class3d_recovers_states_and_writes_outputs(states):
    from cryoframe.geometry.masks import soft_sphere
    from cryoframe.jobs._volumes import write_map

    d, truth = states
    write_map(d / "solvent.mrc", soft_sphere(BOX, 13, 3), 2.5)
    write_map(d / "focus.mrc", soft_sphere(BOX, 11, 3), 2.5)
    out = api.class3d(d / "in.cf", d / "c3d.cf", classes=K, iters=8, seed=0, partition_size=256,
                      solvent_mask=d / "solvent.mrc", focus_mask=d / "focus.mrc", target_resolution_A=6.0)
    t = out.table(["alignments3D/class", "alignments3D/class_posterior", "alignments3D/class_ess",
                   "alignments3D_multi/class_posterior", "alignments_class3D_2/class_posterior"])
    lab = t.column("alignments3D/class").to_numpy()
    assert _ari(truth["class"], lab) >= 0.9
    post = np.stack(t.column("alignments3D_multi/class_posterior").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(post.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(post.argmax(1), lab)
    np.testing.assert_allclose(t.column("alignments3D/class_posterior").to_numpy(), post.max(1), rtol=1e-6)
    np.testing.assert_allclose(t.column("alignments3D/class_ess").to_numpy(), 1 / (post.astype(float) ** 2).sum(1),
                               rtol=1e-4)
    np.testing.assert_allclose(t.column("alignments_class3D_2/class_posterior").to_numpy(), post[:, 2])
    ex = out.extras_dir()
    model = json.loads((ex / "model.json").read_text())
    assert sum(c["size"] for c in model["classes"]) == N
    assert model["box_px"] == 28 and model["nyquist_A"] <= 6.0  # 6 Å target: crop to the even box with Nyquist <= 6 Å
    assert [c["size"] for c in model["classes"]] == np.bincount(lab, minlength=K).tolist()
    sets = [ParticleStore(ex / "classes" / f"class_{k:03d}.cf") for k in range(K)]
    assert sum(s.n for s in sets) == N and all(s.has_images for s in sets)
    for f in ("class_000.mrc", "consensus.mrc", "class_flow.png", "ess_histogram.html", "class_fsc.png",
              "class_slices.png"):
        assert (ex / f).is_file(), f
    star = api.export(out, d / "c3d.star", format="star", images=True)
    text = open(star).read()
    assert "_rlnClassNumber" in text


@pytest.mark.parametrize("init,hard,starts", [("simple", False, 1), ("pca", True, 2)])
def test_class3d_accuracy_from_scratch(states, tmp_path, init, hard, starts):
    d, truth = states
    out = api.class3d(d / "in.cf", tmp_path / "acc.cf", classes=K, iters=10, seed=0, partition_size=256, init=init,
                      hard=hard, starts=starts, plots=False)
    lab = out.table(["alignments3D/class"]).column(0).to_numpy()
    assert _ari(truth["class"], lab) >= 0.95
    model = json.loads((out.extras_dir() / "model.json").read_text())
    assert model["parameters"]["init"] == init and model["history"][-1]["phase"] == "F-EM"


def test_class3d_continue_gives_same_labels(states, tmp_path):
    d, _ = states
    kw = dict(classes=K, seed=2, partition_size=256, switch_threshold=0.0, plots=False)
    full = api.class3d(d / "in.cf", tmp_path / "full.cf", iters=4, **kw)
    part = api.class3d(d / "in.cf", tmp_path / "part.cf", iters=2, **kw)
    resumed = api.class3d(part.path, tmp_path / "resumed.cf", iters=4, resume=True, plots=False)
    a = full.table(["alignments3D/class"]).column(0).to_numpy()
    b = resumed.table(["alignments3D/class"]).column(0).to_numpy()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="classes"):
        api.class3d(part.path, tmp_path / "x.cf", classes=K + 1, resume=True)


def test_class3d_bad_input(states, tmp_path, capsys):
    d, _ = states
    from cryoframe.jobs._volumes import write_map

    write_map(tmp_path / "m40.mrc", np.ones((40, 40, 40), np.float32), 2.5)
    write_map(tmp_path / "mpx.mrc", np.ones((BOX, BOX, BOX), np.float32), 3.0)
    cases = [(["--classes", str(N + 1)], "larger than the number"),
             (["--target-resolution", "3"], "beyond Nyquist"),
             (["--solvent-mask", str(tmp_path / "m40.mrc")], "box"),
             (["--focus-mask", str(tmp_path / "mpx.mrc")], "pixel size"),
             (["--continue"], "checkpoint")]
    for extra, msg in cases:
        base = [] if "--classes" in extra else ["--classes", "2"]
        rc = cli(["class3d", str(d / "in.cf"), *base, *extra, "--out", str(tmp_path / "o.cf")])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err, (extra, err)
        assert not (tmp_path / "o.cf").exists()
    # no poses
    from cryoframe.query.expr import filter_store

    nopose = filter_store(ParticleStore(d / "in.cf"), tmp_path / "np.cf", None,
                          columns=[c for c in ParticleStore(d / "in.cf").fields if not c.startswith("alignments3D")])
    rc = cli(["class3d", str(nopose.path), "--classes", "2", "--out", str(tmp_path / "o.cf")])
    assert rc == 2 and "ab-initio" in capsys.readouterr().err


def test_auto_solvent_mask_covers_every_state_and_is_written(states, tmp_path):
    """Without --solvent-mask the solvent mask is made from the consensus: it covers the density of
    every state (a domain present in one state included), leaves the box corners out, is written to
    extras/ at the particles' box and pixel size, and --no-auto-mask turns it off."""
    import mrcfile

    from cryoframe.algorithms.class3d.model import auto_solvent_mask

    d, truth = states
    vols = np.asarray(truth["volumes"])
    m = auto_solvent_mask(vols.mean(0), 2.5)  # the consensus of equal-sized states
    assert m.shape == vols.shape[1:] and m.min() >= 0 and m.max() <= 1
    for v in vols:
        dense = v >= 0.2 * v.max()
        assert m[dense].min() >= 0.99, m[dense].min()
    g = np.arange(BOX) - BOX // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    assert m[r > 0.65 * BOX].max() < 0.05 and 0.02 < m.mean() < 0.6  # the box corners are solvent
    assert np.all(auto_solvent_mask(np.zeros((8, 8, 8)), 2.5) == 1)  # no density: no masking
    out = api.class3d(d / "in.cf", tmp_path / "auto.cf", classes=K, iters=3, seed=0, partition_size=256, plots=False)
    f = out.extras_dir() / "solvent_mask_auto.mrc"
    with mrcfile.open(f) as mrc:
        assert mrc.data.shape == (BOX, BOX, BOX) and abs(float(mrc.voxel_size.x) - 2.5) < 1e-3
        assert 0.02 < float(mrc.data.mean()) < 0.6
    off = api.class3d(d / "in.cf", tmp_path / "off.cf", classes=K, iters=3, seed=0, partition_size=256, plots=False,
                      auto_mask=False)
    assert not (off.extras_dir() / "solvent_mask_auto.mrc").exists()
