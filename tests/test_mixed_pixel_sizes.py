"""Particles of several pixel sizes (RELION optics groups with different rlnImagePixelSize) are bad input
for the jobs that need one: before, reconstruct and class3d used the first particle's pixel size for all,
and class2d fell back to 1 Å/px (its CTF then wrong for every particle)."""

from __future__ import annotations

from pathlib import Path

import pytest
import starfile
from conftest import leftovers

from cryoframe import api
from cryoframe.testing import write_star_dataset

JOBS = {
    "reconstruct": ["--no-plots"],
    "class2d": ["--classes", "2", "--iters", "1", "--no-plots"],
    "class3d": ["--classes", "2", "--iters", "1", "--no-plots"],
    "abinitio": ["--initial-iterations", "1", "--intermediate-iterations", "1", "--starts", "1", "--no-plots"],
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RELION 3.1 .star whose two optics groups have 4.0 and 3.5 Å/px, imported."""
    d = tmp_path_factory.mktemp("mixed")
    ds = write_star_dataset(d / "rel", 60, box=16, classes=1, snr=1.0, kind="3d", seed=0, psize_A=4.0)
    blocks = starfile.read(ds.particles, always_dict=True)
    assert len(blocks["optics"]) == 2
    blocks["optics"].loc[1, "rlnImagePixelSize"] = 3.5
    starfile.write(blocks, d / "rel" / "mixed.star")
    (d / "stores").mkdir()
    return api.import_(d / "rel" / "mixed.star", d / "stores" / "m.cf").path


@pytest.mark.parametrize("verb", sorted(JOBS))
def test_mixed_pixel_sizes_is_one_clear_error(verb: str, mixed: Path, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / f"{verb}_out"
    code, _, err = run_cli(verb, mixed, *JOBS[verb], "--out", out)
    assert code == 2, err
    assert "mixed pixel sizes (blob/psize_A 3.5, 4 Å)" in err and "abs(`blob/psize_A` - 3.5) < 0.0001" in err, err
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_one_pixel_size_of_a_mixed_store_runs_at_its_own(mixed: Path, tmp_path: Path) -> None:
    s = api.open_store(mixed)
    assert s.psize_A is None  # the import leaves it unset when the particles disagree
    sub = api.query(mixed, "abs(`blob/psize_A` - 3.5) < 0.0001", out=tmp_path / "a.cf")
    assert 0 < sub.n < s.n and sub.pixel_size() == pytest.approx(3.5)
    rec = api.reconstruct(sub, tmp_path / "rec", plots=False)
    assert rec["psize_A"] == pytest.approx(3.5) and rec["n_particles"] == sub.n
