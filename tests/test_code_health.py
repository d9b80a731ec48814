"""Issue 13 part A: defects with tests that failed before their fix (prefix strip, error types,
GPU fallback logging, joined stores keep optics and honour the scheduler, I/O errors not blamed on
--where)."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest

from cryoframe import api
from cryoframe.errors import CryoframeError, InputError


# --- 1. the cryoSPARC '>' path prefix -----------------------------------------------------------------
def test_strip_path_prefix_strips_exactly_one_leading_marker() -> None:
    from cryoframe.storage.convert import strip_path_prefix

    got = strip_path_prefix(np.array([b">a.mrcs", b">>b.mrcs", b"c>.mrcs", b"d.mrcs"], dtype="S"))
    assert got.tolist() == ["a.mrcs", ">b.mrcs", "c>.mrcs", "d.mrcs"]
    assert strip_path_prefix(np.array([">x", "y"], dtype=object)).tolist() == ["x", "y"]
    assert strip_path_prefix(">>z") == ">z"


def test_star_export_keeps_a_prefix_first_seen_after_row_1000() -> None:
    from cryoframe.storage.convert import canonical_to_relion

    n = 1500
    paths = np.array([b"J1/a.mrcs"] * n, dtype="S12")
    paths[1400] = b">J1/a.mrcs"
    cols = {"uid": np.arange(n, dtype=np.uint64), "blob/path": paths, "blob/idx": np.zeros(n, dtype=np.uint32)}
    out = canonical_to_relion(cols, n, extra_fields=True)
    assert out["rlnImageName"][1400] == "000001@J1/a.mrcs"  # one '>' stripped for RELION
    assert "_blob/path" in out, "the '>' prefix at row 1400 must travel in the _blob/path extra"
    assert out["_blob/path"][1400] == ">J1/a.mrcs"


def test_motion_paths_strip_one_prefix_only(tmp_path: Path) -> None:
    import pandas as pd

    from cryoframe.query.stats import _motion

    (tmp_path / ">m").mkdir()
    traj = np.zeros((1, 3, 2))
    traj[0, :, 0] = [0.0, 3.0, 7.0]
    np.save(tmp_path / ">m" / "t.npy", traj)
    df = pd.DataFrame({"motion/psize_A": [2.0]})
    # '>>m/t.npy' is the file '>m/t.npy' under cryoSPARC's one-character marker
    got = _motion(pd.Series([b">>m/t.npy"]), pd.Series([0]), df, {"project_dir": str(tmp_path)})
    np.testing.assert_allclose(got, [14.0])


# --- 5. InputError is a ValueError ----------------------------------------------------------------------
def test_input_error_is_a_value_error() -> None:
    assert issubclass(InputError, ValueError)
    assert issubclass(InputError, CryoframeError)
    with pytest.raises(ValueError):
        raise InputError("x")


# --- 4. GPU fallback is logged ---------------------------------------------------------------------------
def test_auto_device_logs_why_it_fell_back_import_error(monkeypatch, caplog) -> None:  # noqa: ANN001
    import importlib

    from cryoframe import backend

    real = importlib.import_module

    def fake(name: str, *a, **k):  # noqa: ANN002, ANN003, ANN202
        if name == "cupy":
            raise ImportError("No module named 'cupy' (simulated)")
        return real(name, *a, **k)

    monkeypatch.setattr(backend.importlib, "import_module", fake)
    with caplog.at_level(logging.WARNING, logger="cryoframe.backend"):
        assert backend.get_array_module("auto") is np
    assert any("No module named 'cupy' (simulated)" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def test_auto_device_logs_cuda_runtime_error(monkeypatch, caplog) -> None:  # noqa: ANN001
    from cryoframe import backend

    class CUDARuntimeError(RuntimeError):
        pass

    def count() -> int:
        raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count)))
    monkeypatch.setattr(backend.importlib, "import_module", lambda name, *a, **k: fake_cupy)
    with caplog.at_level(logging.WARNING, logger="cryoframe.backend"):
        assert backend.get_array_module("auto") is np
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cudaErrorInsufficientDriver" in m for m in msgs), msgs
    with pytest.raises(CryoframeError, match="cudaErrorInsufficientDriver"):
        backend.get_array_module("gpu")  # the explicit request names the cause too


# --- 2. only expression errors are the user's ------------------------------------------------------------
@pytest.fixture
def small_store(cs_project, tmp_path: Path):  # noqa: ANN001, ANN201
    return api.import_(cs_project.main, tmp_path / "j.cf", metadata_only=True)


def _corrupt_pages(store) -> None:  # noqa: ANN001
    """Overwrite every data page, keep the footer: the store opens, reading its rows fails."""
    for f in store._files:
        b = bytearray(Path(f).read_bytes())
        end = len(b) - 8 - int.from_bytes(b[-8:-4], "little")  # start of the footer
        b[4:end] = b"\xff" * (end - 4)
        Path(f).write_bytes(bytes(b))


# the Arrow-translated path and the pandas fallback (`.abs()` is pandas-only syntax)
@pytest.mark.parametrize("where", ["`alignments3D/error` > 0.5", "`alignments3D/error`.abs() > 0.5"])
@pytest.mark.parametrize("to_store", [False, True])
def test_query_io_error_is_not_blamed_on_the_expression(small_store, tmp_path: Path, where: str,
                                                        to_store: bool) -> None:
    s = api.open_store(small_store.path)
    _corrupt_pages(s)
    with pytest.raises(OSError, match="thrift|page header") as ei:
        api.query(s, where, **({"out": tmp_path / "o.cf"} if to_store else {}))
    assert "bad --where" not in str(ei.value)
    assert not (tmp_path / "o.cf").exists()


def test_memory_error_during_evaluation_propagates(small_store, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import pandas as pd

    real = pd.DataFrame.query

    def oom(self, expr, **kw):  # noqa: ANN001, ANN003, ANN202
        if len(self) > 0:  # dask evaluates an empty meta frame first
            raise MemoryError("simulated: worker ran out of memory")
        return real(self, expr, **kw)

    monkeypatch.setattr(pd.DataFrame, "query", oom)
    for kw in ({}, {"out": tmp_path / "o.cf"}):
        with pytest.raises(MemoryError, match="simulated"):
            api.query(small_store, "`alignments3D/error`.abs() > 0.5", **kw)


def test_query_missing_parquet_file_reports_the_file(small_store) -> None:  # noqa: ANN001
    s = api.open_store(small_store.path)
    for f in s._files:
        Path(f).unlink()
    with pytest.raises(Exception) as ei:
        api.query(s, "`alignments3D/error` > 0.5 and uid % 2 == 0")
    assert "bad --where" not in str(ei.value)
    assert isinstance(ei.value, (OSError, FileNotFoundError)) or "No such file" in str(ei.value) \
        or "not found" in str(ei.value).lower(), repr(ei.value)


def test_bad_expression_is_still_an_input_error(small_store) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="bad --where"):
        api.query(small_store, "`alignments3D/error` >> > 1")
    with pytest.raises(InputError, match="unknown field"):
        api.query(small_store, "`no/such` > 1")


# --- 3. joins keep optics and honour the scheduler -------------------------------------------------------
@pytest.fixture
def star_stores(star_project, tmp_path: Path):  # noqa: ANN001, ANN201
    a = api.import_(star_project.star, tmp_path / "a.cf", project_dir=star_project.root)
    b = api.query(a, None, out=tmp_path / "b.cf")
    return a, b


def test_join_out_store_keeps_optics(star_stores, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = star_stores
    assert a.optics() is not None
    j = api.query(a, None, join=[b], out=tmp_path / "j.cf")
    assert j.optics() is not None
    assert j.optics().equals(a.optics())
    assert j.optics().num_rows == 2  # the fixture's two optics groups


def test_join_honours_scheduler(star_stores, monkeypatch) -> None:  # noqa: ANN001
    import dask

    from cryoframe.query import join as join_mod

    a, b = star_stores
    seen: list[object] = []
    real = join_mod.joined_table

    def spy(stores):  # noqa: ANN001, ANN202
        seen.append(dask.config.get("scheduler", None))
        return real(stores)

    monkeypatch.setattr(join_mod, "joined_table", spy)
    df = api.query(a, "`ctf/df1_A@a` > 0", join=[b], scheduler="synchronous")
    assert seen == ["synchronous"]
    assert len(df) == a.n


# --- 9. README's Layout names every package -------------------------------------------------------------
def test_readme_layout_names_every_subpackage() -> None:
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    start = text.index("\n## Layout")
    nxt = text.find("\n## ", start + 1)
    section = text[start:] if nxt < 0 else text[start:nxt]
    pkg = root / "src" / "cryoframe"
    subs = sorted(str(d.parent.relative_to(pkg)) for d in pkg.rglob("__init__.py") if d.parent != pkg)
    assert subs, "no subpackages found"
    missing = [s for s in subs if f"`{s}/`" not in section]
    assert not missing, f"README Layout does not name: {missing}"


# --- 6. the typed API mirrors the functions it wraps ----------------------------------------------------
def _params(fn, skip: set[str]) -> dict[str, object]:  # noqa: ANN001
    import inspect

    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if n not in skip}


def test_api_class2d_and_synth_copy_the_wrapped_parameters() -> None:
    from cryoframe.jobs.class2d import class2d as job_class2d
    from cryoframe.testing import synth_store

    assert _params(api.class2d, {"store", "out", "scheduler"}) == _params(job_class2d, {"store", "out"})
    assert _params(api.synth, set()) == _params(synth_store, set())


def test_api_option_types_match_the_cli_choices() -> None:
    from cryoframe.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices
    opts = {(v, o.dest): o.choices for v, p in sub.items() for o in p._actions if o.choices}
    assert opts[("class2d", "algorithm")] == ["em", "vdam"] and opts[("class2d", "init")] == ["random", "msa"]
    assert opts[("subset", "on_missing")] == ["error", "drop", "separate"]
    assert opts[("export", "format")] == ["cs", "star"] and opts[("class2d", "device")] == ["cpu", "gpu", "auto"]
