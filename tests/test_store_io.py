"""Store writer/reader hygiene: errors of background writes during abort are logged, and exporting
images reads the image-row column once (not once per chunk)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryoframe import api
from cryoframe.storage import store as store_mod
from cryoframe.storage.store import IMAGE_ROW, StoreWriter


def test_abort_logs_errors_of_background_parquet_writes(tmp_path: Path, caplog, monkeypatch) -> None:  # noqa: ANN001
    def broken(self, table, row_group_size=None):  # noqa: ANN001, ANN202
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", broken)
    with caplog.at_level(logging.WARNING, logger="cryoframe.storage.store"):
        with pytest.raises(RuntimeError, match="boom"):
            with StoreWriter(tmp_path / "x.cf", op="test") as w:
                w.write_metadata(pa.table({"uid": pa.array(np.arange(5, dtype=np.uint64))}))
                raise RuntimeError("boom")
    assert not (tmp_path / "x.cf").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    msgs = [r for r in caplog.records if r.name == "cryoframe.storage.store" and r.levelno == logging.WARNING]
    assert msgs and "disk full (simulated)" in msgs[0].getMessage()


def test_export_images_reads_the_image_row_column_once(tmp_path: Path, monkeypatch, run_cli) -> None:  # noqa: ANN001
    monkeypatch.setattr(store_mod, "image_chunk_rows", lambda box, itemsize=4: 7)  # 7 particles per chunk
    s = api.synth(tmp_path / "p.cf", n=50, box=16, classes=2, seed=1, kind="2d")
    t = s.table()
    with StoreWriter(tmp_path / "q.cf", op="test", parent=s) as w:  # a selection: image rows are not 0..n-1
        w.write_metadata(t.filter(pa.array(np.arange(s.n) % 3 != 0)))
        sub = w.derive(s)
    assert sub.image_array().chunks[0] == 7 and sub.n > 21
    reads: list[list[str] | None] = []
    orig = store_mod._read_parquet  # the store's one Parquet reader

    def spy(source, columns=None):  # noqa: ANN001, ANN202
        reads.append(columns)
        return orig(source, columns)

    monkeypatch.setattr(store_mod, "_read_parquet", spy)
    code, _, err = run_cli("-q", "export", sub.path, "--images", "--out", tmp_path / "o.star")
    assert code == 0, err
    assert sum(1 for c in reads if c is not None and IMAGE_ROW in c) == 1
    import mrcfile

    got = mrcfile.read(tmp_path / "o.mrcs")
    np.testing.assert_array_equal(got, np.asarray(sub.images()))


def test_atomic_outputs_leave_nothing_on_failure_and_refuse_existing(tmp_path: Path) -> None:
    from cryoframe.errors import FormatError, StoreError
    from cryoframe.storage.atomic import atomic_path, check_output, write_json_atomic
    from cryoframe.storage.formats.mrc import write_stack

    with pytest.raises(FormatError, match="wrote 2 images, expected 3"):
        write_stack(tmp_path / "s.mrcs", 3, 4, [np.zeros((2, 4, 4), np.float32)])
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(tmp_path / "a.json", {"x": np.float32(1.5), "p": tmp_path})
    assert (tmp_path / "a.json").read_text().replace(" ", "").replace("\n", "") == \
        '{"x":1.5,"p":"' + str(tmp_path) + '"}'
    with pytest.raises(StoreError, match="already exists"):
        check_output(tmp_path / "a.json", overwrite=False)
    with pytest.raises(StoreError, match="output directory does not exist"):
        check_output(tmp_path / "no" / "b.json", overwrite=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        raise RuntimeError
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["old.txt"]
    with atomic_path(tmp_path / "d") as tmp:  # a directory replaces a directory
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "d"]


def test_manifest_is_typed_and_round_trips_the_json(tmp_path: Path) -> None:
    import json

    from cryoframe.errors import StoreError
    from cryoframe.storage.manifest import Manifest

    s = api.synth(tmp_path / "p.cf", n=10, box=16, classes=2, seed=1, kind="2d")
    on_disk = json.loads((s.path / "manifest.json").read_text())
    m = s.manifest
    assert isinstance(m, Manifest) and m.to_dict() == on_disk
    assert (m.n_particles, m.box_px, m.psize_A, m.lineage[-1]["op"]) == (10, 16, 2.0, "synth")
    assert m["images"] == m.images and m.get("source") is None and m.get("nope", 3) == 3
    assert Manifest.from_dict({**on_disk, "future_key": [1]}).to_dict()["future_key"] == [1]
    with pytest.raises(StoreError, match="missing content_hash"):
        Manifest.from_dict({k: v for k, v in on_disk.items() if k != "content_hash"})
