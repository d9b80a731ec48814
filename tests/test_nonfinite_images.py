"""A NaN or infinite pixel in a particle image (or a map voxel) is bad input for the compute jobs: one
clear error naming the store and the particle (its uid, and the query that leaves it out), exit
code 2, nothing written.  Without the check every map, FSC and score of the run became NaN and the
job exited 0 (reconstruct reported "FSC 0.143 at Nyquist")."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import zarr
from conftest import leftovers

from cryoframe import api
from cryoframe.errors import InputError
from cryoframe.storage.store import ParticleStore, check_finite

BAD_ROW = 5


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A posed 3D store of 60 particles whose image 5 holds one NaN pixel."""
    d = tmp_path_factory.mktemp("nan") / "in"
    d.mkdir()
    s = api.synth(d / "s.cf", n=60, box=16, classes=1, kind="3d", snr=1.0, seed=3)
    z = zarr.open_array(str(s.images_path()), mode="r+")
    img = z[BAD_ROW]
    img[4, 6] = np.nan
    z[BAD_ROW] = img
    return d / "s.cf"


JOBS = {
    "abinitio": ["--classes", "1", "--initial-iterations", "1", "--intermediate-iterations", "1", "--starts", "1",
                 "--no-plots"],
    "class3d": ["--classes", "2", "--iters", "1", "--no-plots"],
    "class2d": ["--classes", "2", "--iters", "1", "--no-plots"],
    "reconstruct": ["--no-plots"],
}


@pytest.mark.parametrize("verb", sorted(JOBS))
def test_a_nan_image_is_one_clear_error(verb: str, nan_store: Path, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    uid = int(ParticleStore(nan_store).table(["uid"]).column(0)[BAD_ROW].as_py())
    out = tmp_path / ("out" if verb == "reconstruct" else "out.cf")
    code, _, err = run_cli(verb, nan_store, *JOBS[verb], "--out", out)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "error:" in err, err
    for part in (str(nan_store), f"particles [{BAD_ROW}]", f"uid [{uid}]", "NaN or infinite",
                 f"--where 'uid not in [{uid}]'"):
        assert part in err, err
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_the_query_in_the_message_leaves_the_particle_out(nan_store: Path, tmp_path: Path) -> None:
    uid = int(ParticleStore(nan_store).table(["uid"]).column(0)[BAD_ROW].as_py())
    view = api.query(nan_store, f"uid not in [{uid}]", out=tmp_path / "ok.cf")
    assert view.n == 59
    rec = api.reconstruct(view, tmp_path / "rec", plots=False)
    assert np.isfinite(mrcfile.read(rec["files"]["map"])).all()
    # the view's own rows are what its check counts: particle 5 of the view is the parent's particle 6
    z = np.asarray(view.images(finite=True).compute())
    assert np.isfinite(z).all() and z.shape == (59, 16, 16)


def test_check_finite_names_rows_from_the_block_start() -> None:
    block = np.zeros((8, 4, 4), np.float32)
    check_finite(block, 100, "somewhere")  # finite: nothing raised
    block[2, 1, 1] = np.inf
    block[6, 0, 3] = np.nan
    with pytest.raises(InputError, match=r"somewhere: the images of particles \[102, 106\]"):
        check_finite(block, 100, "somewhere")


def test_images_check_only_when_asked(nan_store: Path) -> None:
    s = ParticleStore(nan_store)
    assert np.isnan(np.asarray(s.images().compute())[BAD_ROW]).any()  # export and views still see the data
    with pytest.raises(InputError, match=rf"particles \[{BAD_ROW}\]"):
        s.images(finite=True).compute()
    with pytest.raises(InputError, match=rf"particles \[{BAD_ROW}\]"):
        s.read_images(0, 10, finite=True)
    assert np.isfinite(s.read_images(6, 60, finite=True)).all()


def test_a_nan_map_is_one_clear_error(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    vol = np.zeros((16, 16, 16), np.float32)
    vol[4:12, 4:12, 4:12] = 1.0
    vol[0, 0, 0] = np.nan
    p = tmp_path / "nan_map.mrc"
    with mrcfile.new(p) as m:
        m.set_data(vol)
        m.voxel_size = 2.0
    code, _, err = run_cli("mask", p, "--threshold", "0.5", "--out", tmp_path / "mask.mrc")
    assert code == 2 and "nan_map.mrc: 1 voxels are NaN or infinite" in err, err
    assert not (tmp_path / "mask.mrc").exists()
    code, _, err = run_cli("project", p, "--n", "10", "--out", tmp_path / "proj.cf")
    assert code == 2 and "nan_map.mrc: 1 voxels are NaN or infinite" in err, err
    assert leftovers(tmp_path) == []


def test_a_nan_defocus_is_one_clear_error(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    """A NaN CTF parameter (here a RELION .star's rlnDefocusU) imports as metadata, but the jobs that
    apply the CTF refuse it by field, particle and uid; the query they suggest works (uids beyond int64 too)."""
    import starfile

    from cryoframe.testing import write_star_dataset

    ds = write_star_dataset(tmp_path / "rel", 40, box=16, classes=1, snr=1.0, kind="3d", seed=0, psize_A=4.0)
    blocks = starfile.read(ds.particles, always_dict=True)
    blocks["particles"].loc[7, "rlnDefocusU"] = np.nan
    starfile.write(blocks, tmp_path / "rel" / "nan.star")
    d = tmp_path / "stores"
    d.mkdir()
    s = api.import_(tmp_path / "rel" / "nan.star", d / "c.cf")
    uid = int(s.table(["uid"]).column(0)[7].as_py())
    for verb, args in (("reconstruct", ["--no-plots"]), ("abinitio", JOBS["abinitio"]), ("class3d", JOBS["class3d"])):
        out = tmp_path / f"{verb}_out"
        code, _, err = run_cli(verb, d / "c.cf", *args, "--out", out)
        assert code == 2, err
        for part in ("ctf/df1_A", "particles [7]", f"uid [{uid}]", f"--where 'uid not in [{uid}]'"):
            assert part in err, err
        assert not out.exists()
    assert leftovers(tmp_path) == []
    code, _, err = run_cli("query", d / "c.cf", "--where", f"uid not in [{uid}]", "--out", d / "ok.cf")
    assert code == 0, err
    rec = api.reconstruct(d / "ok.cf", tmp_path / "rec", plots=False)
    assert rec["n_particles"] == 39 and np.isfinite(mrcfile.read(rec["files"]["map"])).all()


@pytest.mark.parametrize(("label", "value", "field", "what"), [
    ("rlnVoltage", 0.0, "ctf/accel_kv", "not > 0 kV"),
    ("rlnVoltage", -300.0, "ctf/accel_kv", "not > 0 kV"),
    ("rlnAmplitudeContrast", 1.5, "ctf/amp_contrast", "not in [0, 1)"),
])
def test_an_undefined_ctf_is_one_clear_error(label: str, value: float, field: str, what: str, tmp_path: Path,
                                             run_cli) -> None:  # noqa: ANN001
    """Optics values for which the CTF is undefined (NaN maps before: the electron wavelength at 0 kV,
    the arcsin of the amplitude contrast) are refused by the jobs that apply the CTF."""
    import starfile

    from cryoframe.testing import write_star_dataset

    ds = write_star_dataset(tmp_path / "rel", 20, box=16, classes=1, snr=1.0, kind="3d", seed=0, psize_A=4.0)
    blocks = starfile.read(ds.particles, always_dict=True)
    blocks["optics"][label] = value
    starfile.write(blocks, tmp_path / "rel" / "bad.star")
    d = tmp_path / "stores"
    d.mkdir()
    api.import_(tmp_path / "rel" / "bad.star", d / "c.cf")
    code, _, err = run_cli("reconstruct", d / "c.cf", "--no-plots", "--out", tmp_path / "rec")
    assert code == 2 and f"field {field} is {what}" in err and f"value {value:g}" in err, err
    assert not (tmp_path / "rec").exists()
    code, _, err = run_cli("reconstruct", d / "c.cf", "--no-plots", "--no-ctf", "--out", tmp_path / "rec")
    assert code == 0, err  # the hint it gives works


@pytest.mark.parametrize(("label", "field"), [("rlnOriginXAngst", "alignments3D/shift"),
                                              ("rlnAngleTilt", "alignments3D/pose")])
def test_a_nan_pose_or_shift_is_one_clear_error(label: str, field: str, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    import starfile

    from cryoframe.testing import write_star_dataset

    ds = write_star_dataset(tmp_path / "rel", 20, box=16, classes=1, snr=1.0, kind="3d", seed=0, psize_A=4.0)
    blocks = starfile.read(ds.particles, always_dict=True)
    blocks["particles"].loc[3, label] = np.nan
    starfile.write(blocks, tmp_path / "rel" / "bad.star")
    d = tmp_path / "stores"
    d.mkdir()
    s = api.import_(tmp_path / "rel" / "bad.star", d / "c.cf")
    uid = int(s.table(["uid"]).column(0)[3].as_py())
    code, _, err = run_cli("reconstruct", d / "c.cf", "--no-plots", "--out", tmp_path / "rec")
    assert code == 2, err
    for part in (f"field {field} is NaN, null or infinite", "particles [3]", f"uid [{uid}]"):
        assert part in err, err
    assert not (tmp_path / "rec").exists()
