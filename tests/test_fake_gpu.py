"""The GPU branches (``xp is not np``) run in CI against :mod:`fake_cupy`, a strict stand-in for CuPy:
NumPy arithmetic under CuPy's rules on where an array lives.  They must give the CPU's results, and
a host/device mix-up fails here as it would on a GPU.  The same checks on a real GPU are the tests
marked ``gpu``; the slices and sums on the stand-in are in ``test_geometry.py``."""

from __future__ import annotations

import numpy as np
import pytest

from cryoframe.backend import get_array_module, to_host
from cryoframe.synthetic import make_volumes


def test_the_stand_in_enforces_cupys_rules(fake_gpu) -> None:  # noqa: ANN001
    cp = get_array_module("gpu")
    assert cp is fake_gpu
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        _ = a + np.ones(3)
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.concatenate([a, np.ones((1, 3))])
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.ones(3)[cp.asarray([0, 1])]
    with pytest.raises(AttributeError, match="CuPy has no cupy.errstate"):
        _ = cp.errstate  # a NumPy name CuPy does not have
    assert cp.fft.rfftn is not None and cp.take_along_axis is not None
    with pytest.raises(AttributeError, match="cupy.ndarray has no attribute 'itemset'"):
        a.itemset(0, 1.0)  # a NumPy (< 2) method CuPy does not have
    s = a.sum()
    assert isinstance(s, cp.ndarray) and s.ndim == 0 and float(s) == 15.0  # 0-d device array, not a scalar
    assert isinstance(np.exp(a), cp.ndarray)  # NumPy functions dispatch to the device
    np.testing.assert_array_equal(to_host(a[np.array([1, 0])]), [[3, 4, 5], [0, 1, 2]])  # host index: allowed
    b = cp.zeros((2, 3))
    b[0] = np.ones(3)  # host value into a device array: allowed
    b += a
    np.testing.assert_array_equal(b.get(), [[1, 2, 3], [3, 4, 5]])


def _col(path, name: str) -> np.ndarray:  # noqa: ANN001
    from cryoframe.api import open_store

    return np.stack(open_store(path).table().column(name).to_numpy(zero_copy_only=False))


def test_abinitio_on_the_gpu_branch_gives_the_cpu_fit(fake_gpu) -> None:  # noqa: ANN001
    """Two classes, two random starts, the soft search, the branch-and-bound final pass and the maps, on
    the device branch (the pair products and extremes in ``xp``, the insertion in ``xp`` instead of the
    compiled kernel): the same classes and poses as on the CPU."""
    from cryoframe.algorithms.abinitio import AbInitio
    from cryoframe.synthetic import make_particles

    n, box = 120, 24
    imgs, t = make_particles(n, box, classes=1, snr=2.0, psize_A=4.0, kind="3d", seed=0, ctf=True)
    ctf = {"df1_A": t["df1_A"], "df2_A": t["df2_A"], "df_angle_rad": t["df_angle_rad"],
           "accel_kv": np.full(n, 300.0), "cs_mm": np.full(n, 2.7), "amp_contrast": np.full(n, 0.1)}
    kw = dict(psize_A=4.0, initial_resolution_A=30.0, max_resolution_A=16.0, initial_iterations=2,
              intermediate_iterations=2, final_iterations=1, initial_minibatch=40, final_minibatch=60,
              final_passes=1, random_state=0, n_starts=2)
    cpu = AbInitio(2, **kw).fit(imgs, ctf)
    dev = AbInitio(2, **kw, device="gpu").fit(imgs, ctf)
    assert dev._xp is fake_gpu
    for a in (dev.rot_, dev.shifts_px_, dev.labels_, dev.posteriors_, dev.volumes_):
        assert isinstance(a, np.ndarray)  # results come back to the host
    np.testing.assert_array_equal(dev.labels_, cpu.labels_)
    # the xp insertion rounds differently from the compiled kernel: a near tie of the local refinement can
    # go the other way for a particle or two (one particle by 0.1 deg when this was written)
    off = np.abs(dev.rot_ - cpu.rot_).reshape(n, -1).max(1) > 1e-5
    assert off.mean() <= 0.02 and np.abs(dev.rot_ - cpu.rot_).max() < 0.01
    np.testing.assert_allclose(dev.shifts_px_[~off], cpu.shifts_px_[~off], atol=1e-4)
    np.testing.assert_allclose(dev.volumes_, cpu.volumes_, atol=1e-4 * np.abs(cpu.volumes_).max())


def test_gpu_jobs_write_the_cpu_results(fake_gpu, tmp_path) -> None:  # noqa: ANN001
    """``--device gpu`` of project, reconstruct, class3d, class2d and abinitio, end to end through
    Dask partitions, the stores and the exports: the CPU's images, maps, classes and poses."""
    import dask

    from cryoframe import api
    from cryoframe.jobs._volumes import read_map, write_map
    from cryoframe.testing.states3d import write_state_store

    d = tmp_path
    write_map(d / "truth.mrc", make_volumes(1, 24, seed=11)[0], 2.0)
    write_state_store(d / "in3.cf", 300, 24, 2, snr=1.0, seed=1)
    api.synth(d / "s2.cf", n=200, box=24, classes=3, snr=1.0, kind="2d", seed=3)
    runs = {
        "project": lambda dev: api.project(d / "truth.mrc", d / f"p_{dev}.cf", n=200, ctf=True, snr=2.0,
                                           max_shift_px=2.0, seed=1, device=dev),
        "reconstruct": lambda dev: api.reconstruct(d / "p_cpu.cf", d / f"r_{dev}", plots=False, device=dev),
        "class3d": lambda dev: api.class3d(d / "in3.cf", d / f"c3_{dev}.cf", classes=2, iters=3, plots=False,
                                           device=dev),
        "class2d": lambda dev: api.class2d(d / "s2.cf", d / f"c2_{dev}.cf", classes=3, iters=2, psi_step_deg=30,
                                           offset_range_px=2, plots=False, device=dev),
        "abinitio": lambda dev: api.abinitio(d / "p_cpu.cf", d / f"ab_{dev}.cf", classes=1, initial_iterations=2,
                                             intermediate_iterations=2, initial_minibatch=40, final_minibatch=60,
                                             max_resolution_A=10.0, starts=1, plots=False, device=dev),
    }
    made = [0]
    init = type(fake_gpu.asarray(0.0)).__init__

    def counting(self, a):  # noqa: ANN001, ANN202
        made[0] += 1
        init(self, a)

    with dask.config.set(scheduler="threads"):
        for name, run in runs.items():
            run("cpu")
            made[0] = 0
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(type(fake_gpu.asarray(0.0)), "__init__", counting)
                run("gpu")
            assert made[0] > 100, name  # the job's arithmetic ran on the (fake) device
    from cryoframe.api import open_store

    x, y = (np.asarray(open_store(d / f"p_{dev}.cf").images()[:]) for dev in ("cpu", "gpu"))
    np.testing.assert_allclose(y, x, atol=1e-5 * np.abs(x).max())
    for half in ("map.mrc", "map_half_A.mrc"):
        a, b = (read_map(next((d / f"r_{dev}").rglob(half)))[0] for dev in ("cpu", "gpu"))
        np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max())
    for store, col in (("c3", "alignments3D/class"), ("c2", "alignments2D/class"), ("ab", "alignments3D/pose")):
        a, b = (_col(d / f"{store}_{dev}.cf", col) for dev in ("cpu", "gpu"))
        np.testing.assert_allclose(b, a, atol=1e-5)
