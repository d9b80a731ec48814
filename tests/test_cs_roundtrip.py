"""cryoSPARC .cs import/export: lossless field by field and dtype by dtype, images byte-exact."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from conftest import DATA

from cryoframe import api
from cryoframe.storage import ParticleStore


def _joined_reference(p):  # noqa: ANN001, ANN202
    main = np.load(p.main)
    pt = np.load(p.passthrough)
    pos = {int(u): i for i, u in enumerate(pt["uid"])}
    take = np.array([pos[int(u)] for u in main["uid"]])
    return main, pt[take]


def test_cs_import_keeps_every_field_and_dtype(cs_project, tmp_path: Path) -> None:
    s = api.import_(cs_project.main, tmp_path / "j2.cf", passthrough=[cs_project.passthrough],
                    project_dir=cs_project.root)
    main, pt = _joined_reference(cs_project)
    assert s.n == len(main)
    expected = list(main.dtype.names) + [n for n in pt.dtype.names if n not in main.dtype.names]
    assert s.fields == expected
    t = s.table()
    assert str(t.schema.field("uid").type) == "uint64"
    ptype = t.schema.field("alignments3D/pose").type
    assert ptype.list_size == 3 and str(ptype.value_type) == "float"
    uids = t.column("uid").to_numpy()
    assert uids.dtype == np.uint64 and np.array_equal(uids, main["uid"])
    assert uids.max() == np.iinfo(np.uint64).max
    # main wins over passthrough for a shared field
    assert np.all(t.column("blob/sign").to_numpy() == -1)
    np.testing.assert_array_equal(t.column("ctf/df1_A").to_numpy(), pt["ctf/df1_A"])


def test_cs_store_cs_roundtrip_is_exact(cs_project, tmp_path: Path) -> None:
    s = api.import_(cs_project.main, tmp_path / "j2.cf", passthrough=[cs_project.passthrough],
                    project_dir=cs_project.root)
    out = api.export(s, tmp_path / "out.cs", format="cs")
    got = np.load(out)
    main, pt = _joined_reference(cs_project)
    for src in (main, pt):
        for name in src.dtype.names:
            if name == "blob/sign" and src is pt:
                continue
            assert got.dtype[name] == src.dtype[name], name
            np.testing.assert_array_equal(got[name], src[name], err_msg=name)


def test_export_loads_with_cryosparc_tools(cs_project, tmp_path: Path) -> None:
    from cryosparc.dataset import Dataset

    s = api.import_(cs_project.main, tmp_path / "j2.cf", passthrough=[cs_project.passthrough],
                    project_dir=cs_project.root)
    out = api.export(s, tmp_path / "out.cs")
    ds = Dataset.load(str(out))
    assert len(ds) == s.n
    np.testing.assert_array_equal(ds["uid"], np.load(cs_project.main)["uid"])
    np.testing.assert_allclose(ds["alignments3D/pose"], np.load(cs_project.main)["alignments3D/pose"])
    assert set(ds.fields()) == set(s.fields)


def test_images_equal_mrcfile_bytes(cs_project, tmp_path: Path) -> None:
    s = api.import_(cs_project.main, tmp_path / "j2.cf", project_dir=cs_project.root)
    main = np.load(cs_project.main)
    imgs = s.images().compute()
    for i in range(s.n):
        rel = main["blob/path"][i].decode().lstrip(">")
        ref = mrcfile.read(cs_project.root / rel)[main["blob/idx"][i]]
        assert imgs[i].tobytes() == ref.astype(np.float32).tobytes()
    z = s.image_array()
    assert z.shape == (s.n, 24, 24) and z.chunks[0] <= s.n
    assert s.psize_A == pytest.approx(1.5)


def test_default_project_dir_is_job_parent(cs_project, tmp_path: Path) -> None:
    s = api.import_(cs_project.main, tmp_path / "j2.cf")
    assert s.has_images and s.n == 60


def test_export_with_images_writes_stack_and_blob_fields(cs_project, tmp_path: Path) -> None:
    s = api.import_(cs_project.main, tmp_path / "j2.cf", project_dir=cs_project.root)
    outdir = tmp_path / "exp"
    outdir.mkdir()
    out = api.export(s, outdir / "sel.cs", images=True)
    got = np.load(out)
    stack = outdir / got["blob/path"][0].decode()
    assert stack.name == "sel_particles.mrcs"
    data = mrcfile.read(stack)
    np.testing.assert_array_equal(data[got["blob/idx"]], s.images().compute())
    # and it re-imports with the same images
    s2 = api.import_(out, tmp_path / "again.cf", project_dir=outdir)
    np.testing.assert_array_equal(s2.images().compute(), s.images().compute())


def test_metadata_only_real_cryosparc_tools_file(tmp_path: Path) -> None:
    src = DATA / "cryosparc-tools" / "4k_dataset.cs"
    s = api.import_(src, tmp_path / "k.cf", metadata_only=True)
    ref = np.load(src)
    assert s.n == 0 and len(s.fields) == len(ref.dtype.names) == 106
    out = api.export(s, tmp_path / "k.cs")
    assert np.load(out).dtype == ref.dtype


def test_csdat_needs_cryosparc_tools_or_reads_through_it(cs_project, tmp_path: Path) -> None:
    from cryosparc.dataset import Dataset

    ds = Dataset.load(str(cs_project.main))
    csdat = tmp_path / "compressed.cs"
    try:
        ds.save(str(csdat), format=2)  # CSDAT (compressed stream) format
    except TypeError:
        pytest.skip("this cryosparc-tools cannot write CSDAT")
    assert csdat.read_bytes()[:6] == b"\x95CSDAT"
    s = api.import_(csdat, tmp_path / "c.cf", metadata_only=True)
    main = np.load(cs_project.main)
    np.testing.assert_array_equal(s.table(["uid"]).column(0).to_numpy(), main["uid"])
    np.testing.assert_array_equal(np.stack(s.table(["alignments3D/pose"]).column(0).to_numpy(zero_copy_only=False)),
                                  main["alignments3D/pose"])


def test_lineage_records_inputs_and_hashes(cs_project, tmp_path: Path) -> None:
    s = api.import_(cs_project.main, tmp_path / "j2.cf", passthrough=[cs_project.passthrough],
                    metadata_only=True)
    step = s.lineage[-1]
    assert step["op"] == "import" and step["params"]["metadata_only"] is True
    assert [Path(i["path"]).name for i in step["inputs"]] == ["J2_particles.cs", "J2_passthrough_particles.cs"]
    assert all(i["hash"].startswith("blake2b:") for i in step["inputs"])
    again = ParticleStore(s.path)
    assert again.content_hash == s.content_hash
