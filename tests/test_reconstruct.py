"""reconstruct / project / mask verbs end to end: outputs, FSC of the written half maps, split,
symmetry, weights, max resolution, partition independence (threads and a LocalCluster), bad input."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pyarrow as pa
import pytest
from scipy import ndimage

from cryoframe import api
from cryoframe.geometry.fsc import fsc
from cryoframe.geometry.symmetry import symmetry_matrices
from cryoframe.jobs._volumes import read_map, write_map
from cryoframe.storage.store import ParticleStore, StoreWriter
from cryoframe.testing import make_volumes

BOX, PSIZE = 32, 3.0


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rec")
    v = make_volumes(1, BOX, seed=11)[0]
    write_map(d / "truth.mrc", v, PSIZE)
    api.project(d / "truth.mrc", d / "p.cf", n=600, ctf=True, snr=2.0, max_shift_px=2.0, seed=1)
    api.project(d / "truth.mrc", d / "noctf.cf", n=40, seed=2)
    api.mask(d / "truth.mrc", d / "mask.mrc", threshold=0.3 * float(v.max()), extend_px=2, soft_edge_px=3)
    return {"dir": d, "truth": d / "truth.mrc", "p": d / "p.cf", "noctf": d / "noctf.cf", "mask": d / "mask.mrc"}


def _map(path: Path) -> np.ndarray:
    return read_map(path)[0]


def test_reconstruct_cli_writes_maps_fsc_plots_and_split(data, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / "rec"
    code, stdout, err = run_cli("reconstruct", data["p"], "--mask", data["mask"], "--out", out)
    assert code == 0, err
    assert "FSC 0.143" in stdout
    names = {"map.mrc", "map_half_A.mrc", "map_half_B.mrc", "map_filtered.mrc", "fsc.json", "fsc.png", "fsc.html",
             "model.json", "particles.cf"}
    assert names <= {p.name for p in out.iterdir()}
    for n in ("map.mrc", "map_half_A.mrc", "map_half_B.mrc", "map_filtered.mrc"):
        with mrcfile.open(out / n) as m:
            assert m.data.shape == (BOX, BOX, BOX)
            assert m.voxel_size.x == m.voxel_size.y == m.voxel_size.z == pytest.approx(PSIZE)
            assert tuple(m.header.origin.tolist()) == (0.0, 0.0, 0.0)
    truth = _map(data["truth"])
    assert _cc(_map(out / "map.mrc"), truth) > 0.95
    assert _cc(_map(out / "map_filtered.mrc"), truth) > 0.95
    doc = json.loads((out / "fsc.json").read_text())
    a, b, m = _map(out / "map_half_A.mrc"), _map(out / "map_half_B.mrc"), _map(data["mask"])
    # the FSC reported is the FSC of the half maps written next to it
    np.testing.assert_allclose([s["fsc"] for s in doc["shells"]], fsc(a, b), atol=1e-5)
    np.testing.assert_allclose([s["fsc_masked"] for s in doc["shells"]], fsc(a, b, m), atol=1e-5)
    assert doc["shells"][2]["frequency_1_per_A"] == pytest.approx(2 / (BOX * PSIZE))
    assert 2 * PSIZE <= doc["0.143"] <= doc["0.5"] < 40
    model = json.loads((out / "model.json").read_text())
    assert model["particles_per_half"] == {"A": 300, "B": 300}
    assert model["box_px"] == BOX and model["psize_A"] == PSIZE and model["symmetry"] == "C1"
    split = ParticleStore(out / "particles.cf").table(["alignments3D/split"]).column(0).to_numpy()
    assert sorted(np.bincount(split).tolist()) == [300, 300]
    # the same seed gives the same split; and a store that has a split is used as is (no particles.cf)
    code, _, err = run_cli("reconstruct", out / "particles.cf", "--out", tmp_path / "rec2", "--no-plots")
    assert code == 0, err
    assert not (tmp_path / "rec2" / "particles.cf").exists()
    np.testing.assert_allclose(_map(tmp_path / "rec2" / "map_half_A.mrc"), a, atol=1e-4 * np.abs(a).max())


def _same_maps(a: dict, b: dict) -> None:
    for k in ("map", "half_A", "half_B"):
        x, y = _map(Path(a["files"][k])), _map(Path(b["files"][k]))
        np.testing.assert_allclose(x, y, atol=1e-4 * np.abs(x).max())


def test_partitions_give_the_same_maps(data, tmp_path: Path) -> None:  # noqa: ANN001
    one = api.reconstruct(data["p"], tmp_path / "one", partition_size=10_000, plots=False)
    many = api.reconstruct(data["p"], tmp_path / "many", partition_size=70, plots=False, scheduler="threads")
    _same_maps(one, many)


@pytest.mark.slow
def test_local_cluster_gives_the_same_maps(data, tmp_path: Path) -> None:  # noqa: ANN001
    one = api.reconstruct(data["p"], tmp_path / "one", partition_size=10_000, plots=False)
    dist = api.reconstruct(data["p"], tmp_path / "dist", partition_size=300, plots=False, scheduler="local:2")
    _same_maps(one, dist)


def _symmetrize(v: np.ndarray, name: str) -> np.ndarray:
    c = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    p = np.stack([x.ravel(), y.ravel(), z.ravel()])
    out = np.zeros_like(v, dtype=np.float64)
    for g in symmetry_matrices(name):
        q = g @ p + BOX // 2
        out += ndimage.map_coordinates(v, [q[2], q[1], q[0]], order=3).reshape(v.shape)
    return (out / len(symmetry_matrices(name))).astype(np.float32)


def test_symmetry_insertion_improves_a_symmetric_map(tmp_path: Path) -> None:
    v = _symmetrize(make_volumes(1, BOX, seed=12)[0], "D3")
    write_map(tmp_path / "t.mrc", v, PSIZE)
    api.project(tmp_path / "t.mrc", tmp_path / "p.cf", n=120, ctf=True, snr=0.5, seed=3)
    c1 = api.reconstruct(tmp_path / "p.cf", tmp_path / "c1", plots=False)
    d3 = api.reconstruct(tmp_path / "p.cf", tmp_path / "d3", symmetry="D3", plots=False)
    cc1, cc3 = _cc(_map(Path(c1["files"]["map"])), v), _cc(_map(Path(d3["files"]["map"])), v)
    assert 1 - cc3 < 0.6 * (1 - cc1), (cc1, cc3)  # symmetry expansion averages ~6x more views
    assert d3["symmetry_operators"] == 6
    # a wrong group (other axes) does not help
    c3 = api.reconstruct(tmp_path / "p.cf", tmp_path / "d3x", symmetry="C4", plots=False)
    assert _cc(_map(Path(c3["files"]["map"])), v) < cc3


def test_weights_zero_equals_leaving_particles_out(data) -> None:  # noqa: ANN001
    from cryoframe.algorithms.reconstruct import Reconstructor
    from cryoframe.jobs._volumes import particle_geometry

    s = ParticleStore(data["p"])
    g = particle_geometry(s, ctf=True)
    img = s.read_images(0, s.n)
    half = np.arange(s.n) % 2
    keep = np.arange(s.n) % 3 != 0
    w = keep.astype(np.float64)
    a = Reconstructor(BOX, PSIZE).fit(img, g["rot"], g["shifts_px"], half, ctf=g["ctf"], weights=w)
    b = Reconstructor(BOX, PSIZE).fit(img[keep], g["rot"][keep], g["shifts_px"][keep], half[keep],
                                      ctf={k: v[keep] for k, v in g["ctf"].items()})
    np.testing.assert_allclose(a.half_maps_, b.half_maps_, atol=1e-4 * np.abs(b.half_maps_).max())
    c = Reconstructor(BOX, PSIZE).fit(img, g["rot"], g["shifts_px"], half, ctf=g["ctf"], weights=w * 3.0)
    np.testing.assert_allclose(c.map_, a.map_, atol=1e-3 * np.abs(a.map_).max())  # scale-free


def test_max_resolution_removes_higher_frequencies(data, tmp_path: Path) -> None:  # noqa: ANN001
    s = api.reconstruct(data["p"], tmp_path / "r", max_resolution_A=15.0, plots=False)
    m = _map(Path(s["files"]["map"]))
    f = np.abs(np.fft.fftn(m))
    k = np.fft.fftfreq(BOX) / PSIZE
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    assert f[r > 1 / 15.0 + 1.0 / (BOX * PSIZE)].max() < 1e-4 * f.max()
    assert s["resolution_A"]["0.143"] >= 15.0 - 1e-6


def test_project_then_reconstruct_without_ctf(data, tmp_path: Path) -> None:  # noqa: ANN001
    s = api.reconstruct(data["noctf"], tmp_path / "r", ctf=False, plots=False)
    assert _cc(_map(Path(s["files"]["map"])), _map(data["truth"])) > 0.95


def test_mask_sphere_cli(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    code, _, err = run_cli("mask", "--radius", "10", "--soft-edge", "3", "--box", "32", "--psize", "2.5",
                           "--out", tmp_path / "s.mrc")
    assert code == 0, err
    with mrcfile.open(tmp_path / "s.mrc") as m:
        assert m.voxel_size.x == pytest.approx(2.5) and m.data.shape == (32, 32, 32)
        assert m.data[16, 16, 16] == 1.0 and m.data[16, 16, 30] == 0.0


# -- bad input: one line, exit 2, nothing written -------------------------------------------------------
def _restore(src: ParticleStore, path: Path, table: pa.Table) -> Path:
    with StoreWriter(path, op="test", inputs=[src], parent=src) as w:
        w.write_metadata(table)
        w.link_images(src)
        w.commit(psize_A=src.psize_A, box_px=src.box)
    return path


def _fails(run_cli, tmp_path: Path, *argv, expect: list[str], verb: str = "reconstruct") -> None:  # noqa: ANN001
    out = tmp_path / "bad_out"
    code, stdout, err = run_cli(verb, *argv, "--out", out)
    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and "error:" in err, err
    for e in expect:
        assert e in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_no_poses(data, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    s = ParticleStore(data["p"])
    bad = _restore(s, tmp_path / "nopose.cf", s.table().drop_columns(["alignments3D/pose"]))
    _fails(run_cli, tmp_path, bad, expect=["alignments3D/pose", "needs poses from a refinement or ab-initio"])


def test_bad_missing_ctf(data, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    _fails(run_cli, tmp_path, data["noctf"], expect=["--ctf needs", "ctf/df1_A", "--no-ctf"])


def test_bad_mixed_box_sizes(data, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    s = ParticleStore(data["p"])
    t = s.table()
    shape = np.full((s.n, 2), BOX, "<u4")
    shape[::7] = 48
    i = t.column_names.index("blob/shape")
    col = pa.FixedSizeListArray.from_arrays(pa.array(shape.ravel()), 2).cast(t.schema.field(i).type)
    bad = _restore(s, tmp_path / "mixed.cf", t.set_column(i, t.schema.field(i), col))
    _fails(run_cli, tmp_path, bad, expect=["mixed box sizes", "blob/shape"])


@pytest.mark.parametrize("sym", ["X3", "D", "C0", "I7"])
def test_bad_symmetry(data, tmp_path: Path, run_cli, sym: str) -> None:  # noqa: ANN001
    _fails(run_cli, tmp_path, data["p"], "--symmetry", sym, expect=["symmetry", sym])


def test_bad_max_resolution_beyond_nyquist(data, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    _fails(run_cli, tmp_path, data["p"], "--max-resolution", "5", expect=["--max-resolution", "Nyquist", "6.000"])


@pytest.mark.parametrize(("box", "psize", "what"), [(24, PSIZE, "box"), (BOX, 2.0, "pixel size")])
def test_bad_mask_geometry(data, tmp_path: Path, run_cli, box: int, psize: float, what: str) -> None:  # noqa: ANN001
    m = tmp_path / "m.mrc"
    api.mask(None, m, radius_px=8, box=box, psize_A=psize)
    _fails(run_cli, tmp_path, data["p"], "--mask", m, expect=["m.mrc", what])


def test_bad_output_exists(data, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / "exists"
    out.mkdir()
    code, _, err = run_cli("reconstruct", data["p"], "--out", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert list(out.iterdir()) == []


def test_bad_project_and_mask_inputs(data, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    _fails(run_cli, tmp_path, tmp_path / "missing.mrc", "--n", "3", expect=["missing.mrc", "not found"], verb="project")
    _fails(run_cli, tmp_path, data["truth"], expect=["--poses", "--n"], verb="project")
    _fails(run_cli, tmp_path, data["truth"], "--threshold", "1e9", expect=["--threshold", "no voxels"], verb="mask")
    # a negative --max-shift was NumPy's ValueError traceback; --psize 0 fell back to the header silently,
    # --defocus with MIN > MAX drew from the reversed range
    _fails(run_cli, tmp_path, data["truth"], "--n", "3", "--max-shift", "-2", expect=["--max-shift must be >= 0"],
           verb="project")
    _fails(run_cli, tmp_path, data["truth"], "--n", "3", "--psize", "0", expect=["--psize must be > 0"], verb="project")
    _fails(run_cli, tmp_path, data["truth"], "--n", "3", "--defocus", "30000", "10000",
           expect=["--defocus MIN MAX", "0 < MIN <= MAX"], verb="project")


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_regulariser_constant(data, tmp_path: Path, run_cli, value: str) -> None:  # noqa: ANN001
    """A negative constant ran and reported an FSC at inf Å."""
    _fails(run_cli, tmp_path, data["p"], "--regulariser", value, expect=["--regulariser", "finite and >= 0"])


def test_project_copies_the_pose_rows_it_used(data, tmp_path: Path) -> None:  # noqa: ANN001
    src = ParticleStore(data["p"])
    out = api.project(data["truth"], tmp_path / "again.cf", poses=src, ctf=True)
    cols = ["uid", "alignments3D/pose", "alignments3D/shift", "ctf/df1_A"]
    assert out.table(cols).equals(src.table(cols))
    assert out.psize_A == PSIZE and out.box == BOX
    assert "project" in [s["op"] for s in out.lineage]


@pytest.mark.gpu
def test_gpu_reconstruction_matches_cpu(data, tmp_path: Path) -> None:  # noqa: ANN001
    cpu = api.reconstruct(data["p"], tmp_path / "cpu", plots=False)
    gpu = api.reconstruct(data["p"], tmp_path / "gpu", plots=False, device="gpu")
    for k in ("map", "half_A", "half_B"):
        x, y = _map(Path(cpu["files"][k])), _map(Path(gpu["files"][k]))
        np.testing.assert_allclose(x, y, atol=1e-3 * np.abs(x).max())


def test_synth_3d_particles_reconstruct_to_their_volume_in_the_right_hand(tmp_path: Path) -> None:
    api.synth(tmp_path / "s.cf", n=600, box=BOX, classes=1, snr=1.0, kind="3d", seed=3)
    r = api.reconstruct(tmp_path / "s.cf", tmp_path / "rec", plots=False)
    m = _map(Path(r["files"]["map"]))
    v = make_volumes(1, BOX, seed=3)[0]
    assert _cc(m, v) > 0.97
    assert _cc(m, v[::-1]) < 0.8  # the mirror image is clearly worse
    assert r["particles_per_half"]["A"] + r["particles_per_half"]["B"] == 600


def _partition_args(store: ParticleStore) -> tuple:
    from cryoframe.jobs._volumes import particle_geometry

    g = particle_geometry(store, ctf=True)
    half = np.arange(store.n) % 2
    return (store.read_images(0, store.n), g["rot"], g["shifts_px"], g["ctf"], None, half), dict(
        box=g["box"], psize_A=g["psize_A"], batch=128)


def test_kernel_worker_sums_equal_in_process_sums(data) -> None:  # noqa: ANN001
    """The CLI's kernel worker (numba in a second process) inserts exactly what this process would,
    including symmetry copies; a worker that dies mid-job is replaced by in-process insertion."""
    from cryoframe.algorithms.reconstruct import partition_sums
    from cryoframe.geometry import _kernel_worker

    args, kw = _partition_args(ParticleStore(data["p"]))
    sym = symmetry_matrices("D2")
    here = partition_sums(*args, **kw, sym=sym)
    worker = _kernel_worker.prestart()
    try:
        assert worker is not None and _kernel_worker.active() is worker
        there = partition_sums(*args, **kw, sym=sym)
        assert there.shape == here.shape and there.dtype == np.float32
        np.testing.assert_array_equal(there, here)
        assert np.abs(here[..., 2]).max() > 0
        worker._proc.kill()  # the worker dies: the job carries on in this process, with the same sums
        worker._proc.wait()
        again = partition_sums(*args, **kw, sym=sym)
        np.testing.assert_array_equal(again, here)
        assert _kernel_worker.active() is None
    finally:
        _kernel_worker.shutdown()


def test_reconstruct_with_the_kernel_worker_never_loads_numba_here(data, tmp_path: Path) -> None:  # noqa: ANN001
    """The point of the worker: the job's own process never imports numba (its 0.5-1 s of start-up
    runs on the other core), and the maps are those of in-process insertion."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom cryoframe.geometry import _kernel_worker\nassert _kernel_worker.prestart() is not None\n"
            "from cryoframe import api\n"
            f"api.reconstruct({str(data['p'])!r}, {str(tmp_path / 'w')!r}, plots=False)\n"
            "print('numba' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    here = api.reconstruct(data["p"], tmp_path / "here", plots=False)
    _same_maps(json.loads((tmp_path / "w" / "model.json").read_text()), here)
