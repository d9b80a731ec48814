"""Bare .mrcs/.mrc stacks (real EMDB maps from the mrcfile test data, read as image stacks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from conftest import DATA, leftovers

from cryoframe import api
from cryoframe.errors import FormatError


def test_mrcs_import_equals_mrcfile(tmp_path: Path) -> None:
    src = tmp_path / "emd_3197.mrcs"
    shutil.copy(DATA / "mrcfile" / "EMD-3197.map", src)
    s = api.import_(src, tmp_path / "m.cf")
    ref = mrcfile.read(src)
    assert s.n == ref.shape[0] == 20 and s.box == 20
    assert s.images().compute().tobytes() == ref.astype(np.float32).tobytes()
    assert s.psize_A == pytest.approx(11.4)
    idx = s.table(["blob/idx"]).column(0).to_numpy()
    np.testing.assert_array_equal(idx, np.arange(20))
    again = api.import_(src, tmp_path / "m2.cf")
    assert again.table(["uid"]).equals(s.table(["uid"]))  # deterministic uids
    out = api.export(s, tmp_path / "m.star")
    s2 = api.import_(out, tmp_path / "m3.cf")
    np.testing.assert_array_equal(s2.images().compute(), ref)


def test_psize_option_and_non_square_stack(tmp_path: Path) -> None:
    src = tmp_path / "emd_3197.mrcs"
    shutil.copy(DATA / "mrcfile" / "EMD-3197.map", src)
    s = api.import_(src, tmp_path / "m.cf", psize_A=1.1)
    assert s.psize_A == pytest.approx(1.1)
    odd = tmp_path / "emd_3001.mrcs"
    shutil.copy(DATA / "mrcfile" / "EMD-3001.map", odd)
    with pytest.raises(FormatError, match="only square"):
        api.import_(odd, tmp_path / "odd.cf")
    assert leftovers(tmp_path) == ["m.cf"]
