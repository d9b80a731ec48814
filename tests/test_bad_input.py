"""Bad input: one clear error naming the file/field, exit code 2, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import DATA, leftovers, make_cs_project, save_cs, write_mrcs


def _fails(run_cli, tmp_path: Path, *argv, expect: list[str]) -> str:  # noqa: ANN001
    out = tmp_path / "out.cf"
    code, stdout, err = run_cli("import", *argv, "--out", out)
    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and "error:" in err, err
    for e in expect:
        assert e in err, err
    assert not out.exists()
    assert leftovers(tmp_path) == []
    return err


@pytest.fixture
def proj(tmp_path: Path):  # noqa: ANN201
    return make_cs_project(tmp_path / "P1", n=30)


def test_truncated_cs(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    raw = proj.main.read_bytes()
    bad = tmp_path / "trunc.cs"
    bad.write_bytes(raw[: len(raw) - 100])
    _fails(run_cli, tmp_path, bad, "--metadata-only", expect=["trunc.cs", "truncated or garbled"])


def test_garbled_cs(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    bad = tmp_path / "garbled.cs"
    bad.write_bytes(b"\x00\x01garbage" * 50)
    _fails(run_cli, tmp_path, bad, expect=["garbled.cs", "not a cryoSPARC .cs"])
    bad2 = tmp_path / "badheader.cs"
    bad2.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': [('u" + b" " * 200)
    _fails(run_cli, tmp_path, bad2, expect=["badheader.cs"])


def test_cs_without_uid(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    bad = tmp_path / "nouid.cs"
    save_cs(bad, np.zeros(3, dtype=[("ctf/df1_A", "<f4")]))
    _fails(run_cli, tmp_path, bad, "--metadata-only", expect=["nouid.cs", "'uid'"])


def test_duplicate_uids(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    rec = np.load(proj.main)
    rec["uid"][3] = rec["uid"][7]
    bad = tmp_path / "dups.cs"
    save_cs(bad, rec)
    _fails(run_cli, tmp_path, bad, "--metadata-only", expect=["dups.cs", "duplicate uid", str(rec["uid"][7])])


def test_passthrough_uids_do_not_match(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    pt = np.load(proj.passthrough)
    pt["uid"][:] = np.arange(len(pt), dtype=np.uint64) + 17
    bad = tmp_path / "pt.cs"
    save_cs(bad, pt)
    _fails(run_cli, tmp_path, proj.main, "--passthrough", bad, "--metadata-only",
           expect=["pt.cs", "not in this passthrough", "uid"])


def test_missing_image_file(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    proj.stacks[1].unlink()
    _fails(run_cli, tmp_path, proj.main, "--project-dir", proj.root, expect=[proj.stacks[1].name, "not found"])


def test_image_index_past_end(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    rec = np.load(proj.main)
    rec["blob/idx"][5] = 99
    save_cs(proj.main, rec)
    _fails(run_cli, tmp_path, proj.main, "--project-dir", proj.root, expect=["blob/path", "99", "past the end"])


def test_mismatched_box_sizes(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    write_mrcs(proj.stacks[1], np.zeros((25, 32, 32), np.float32))
    _fails(run_cli, tmp_path, proj.main, "--project-dir", proj.root, expect=["mismatched box sizes", "24", "32"])


def test_blob_shape_disagrees_with_stacks(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    rec = np.load(proj.main)
    rec["blob/shape"] = 64
    save_cs(proj.main, rec)
    _fails(run_cli, tmp_path, proj.main, "--project-dir", proj.root, expect=["blob/shape", "64", "24"])


def test_truncated_stack(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    raw = proj.stacks[0].read_bytes()
    proj.stacks[0].write_bytes(raw[:-4000])
    _fails(run_cli, tmp_path, proj.main, "--project-dir", proj.root, expect=[proj.stacks[0].name, "truncated"])


def test_nan_pixels_in_a_stack(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    """One NaN pixel would turn every later map and score into NaN: the import names the stack and the image."""
    data = proj.images[proj.stacks[1].relative_to(proj.root).as_posix()].copy()
    data[1, 5, 7] = np.nan
    data[3, 0, 0] = np.inf
    write_mrcs(proj.stacks[1], data)
    _fails(run_cli, tmp_path, proj.main, "--project-dir", proj.root,
           expect=[proj.stacks[1].name, "positions [2, 4]", "1-based", "NaN or infinite"])


def test_star_without_required_columns(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    bad = tmp_path / "nocols.star"
    starfile.write({"particles": pd.DataFrame({"rlnDefocusU": [1.0, 2.0]})}, bad)
    _fails(run_cli, tmp_path, bad, expect=["nocols.star", "rlnImageName"])


def test_star_optics_group_undefined(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    bad = tmp_path / "optics.star"
    starfile.write({"optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0]}),
                    "particles": pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnOpticsGroup": [2]})}, bad)
    _fails(run_cli, tmp_path, bad, "--metadata-only", expect=["optics.star", "rlnOpticsGroup", "[2]"])


def test_star_bad_image_name(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    bad = tmp_path / "names.star"
    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["abc@a.mrcs"]})}, bad)
    _fails(run_cli, tmp_path, bad, "--metadata-only", expect=["names.star", "abc@a.mrcs"])


@pytest.mark.parametrize("name", ["postprocess.star", "run_it025_optimiser_2D.star", "empty_loop.star"])
def test_non_particle_star_files(name: str, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    _fails(run_cli, tmp_path, DATA / "starfile" / name, "--metadata-only", expect=[name])


def test_missing_input_and_unknown_type(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    _fails(run_cli, tmp_path, tmp_path / "nope.cs", expect=["nope.cs", "no such"])
    odd = tmp_path / "x.txt"
    odd.write_text("hi")
    _fails(run_cli, tmp_path, odd, expect=["x.txt", "unknown file type"])
    odd.unlink()


def test_existing_output_is_not_overwritten(proj, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / "o.cf"
    assert run_cli("import", proj.main, "--metadata-only", "--out", out)[0] == 0
    before = (out / "manifest.json").read_text()
    code, _, err = run_cli("import", proj.main, "--metadata-only", "--out", out)
    assert code == 2 and "already exists" in err
    assert (out / "manifest.json").read_text() == before
    assert run_cli("import", proj.main, "--metadata-only", "--out", out, "--overwrite")[0] == 0


def test_failure_mid_write_leaves_no_partial_store(proj, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from cryoframe import api
    from cryoframe.storage import images

    calls = {"n": 0}
    real = images.StackReader.read

    def flaky(self, path, idx):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk on fire")
        return real(self, path, idx)

    monkeypatch.setattr(images.StackReader, "read", flaky)
    out = tmp_path / "x.cf"
    with pytest.raises(OSError):
        api.import_(proj.main, out, project_dir=proj.root)
    assert not out.exists() and leftovers(tmp_path) == []
