"""One CTF read function for jobs and estimators: the class2d job passes the phase shift through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cryoframe import api
from cryoframe.algorithms.class2d import Class2D
from cryoframe.errors import InputError
from cryoframe.schema import arrow_field
from cryoframe.storage.store import StoreWriter


def _with_phase_shift(src, out: Path, value: float):  # noqa: ANN001, ANN202
    t = src.table()
    i = t.column_names.index("ctf/phase_shift_rad")
    t = t.set_column(i, arrow_field("ctf/phase_shift_rad", np.dtype("<f4")),
                     pa.array(np.full(t.num_rows, value, np.float32)))
    with StoreWriter(out, op="test", parent=src) as w:
        w.write_metadata(t)
        w.link_images(src)
        return w.commit(psize_A=src.psize_A, box_px=src.box)


def test_class2d_job_passes_the_phase_shift_to_the_estimator(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    base = api.synth(tmp_path / "p.cf", n=60, box=24, classes=2, snr=1.0, seed=1, kind="2d")
    phase = _with_phase_shift(base, tmp_path / "ph.cf", 0.7)
    seen: list[dict[str, np.ndarray]] = []
    orig = Class2D._data

    def spy(self, X, ctf_params, *a, **k):  # noqa: ANN001, ANN202
        out = orig(self, X, ctf_params, *a, **k)
        seen.append(out[1])
        return out

    monkeypatch.setattr(Class2D, "_data", spy)
    kw = {"classes": 2, "iters": 1, "psi_step_deg": 60.0, "offset_range_px": 1, "plots": False}
    api.class2d(phase, tmp_path / "a.cf", **kw)
    api.class2d(base, tmp_path / "b.cf", **kw)
    np.testing.assert_allclose(seen[0]["phase_shift_rad"], 0.7, rtol=1e-6)
    assert np.all(np.asarray(seen[1].get("phase_shift_rad", 0.0)) == 0.0)
    # the estimator reading the store itself gets the same parameters
    Class2D(n_classes=2, n_iter=1, psi_step_deg=60.0, offset_range_px=1).fit(phase)
    assert set(seen[-1]) == set(seen[0])
    for k in seen[0]:
        np.testing.assert_array_equal(seen[-1][k], seen[0][k])


def test_read_ctf_params_names_missing_fields(tmp_path: Path) -> None:
    from cryoframe.storage.ctf import read_ctf_params

    s = api.synth(tmp_path / "p.cf", n=20, box=16, classes=2, seed=1, kind="2d")
    p = read_ctf_params(s)
    assert set(p) == {"df1_A", "df2_A", "df_angle_rad", "accel_kv", "cs_mm", "amp_contrast", "phase_shift_rad"}
    assert all(v.dtype == np.float64 and v.shape == (20,) for v in p.values())
    t = s.table()
    t = t.drop_columns(["ctf/cs_mm", "ctf/df2_A"])
    with StoreWriter(tmp_path / "q.cf", op="test", parent=s) as w:
        w.write_metadata(t)
        w.link_images(s)
        q = w.commit(psize_A=s.psize_A, box_px=s.box)
    with pytest.raises(InputError, match=r"ctf/df2_A.*ctf/cs_mm|ctf/cs_mm.*ctf/df2_A"):
        read_ctf_params(q)
