"""Shared fixtures: small, seeded cryoSPARC-like and RELION-like projects written as real files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

DATA = Path(__file__).parent / "data"


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    from cryoframe.backend import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and the [gpu] extra")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """``get_array_module("gpu")`` returns :mod:`fake_cupy`'s strict stand-in for CuPy (NumPy arithmetic
    under CuPy's host/device rules), so the GPU branches run without a GPU; yields that module."""
    import fake_cupy

    import cryoframe.backend as backend

    cp = fake_cupy.make()
    monkeypatch.setattr(backend, "_cupy", lambda: (cp, ""))
    return cp


@dataclass
class CsProject:
    root: Path
    main: Path
    passthrough: Path
    stacks: list[Path]
    images: dict[str, np.ndarray]  # stack relative path -> images


def write_mrcs(path: Path, data: np.ndarray, psize: float = 1.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data.astype(np.float32))
        m.set_image_stack()
        m.voxel_size = psize


def save_cs(path: Path, rec: np.ndarray) -> None:
    with path.open("wb") as fh:
        np.save(fh, rec)


def make_cs_project(root: Path, n: int = 60, box: int = 24, seed: int = 0, k: int = 3) -> CsProject:
    rng = np.random.default_rng(seed)
    per = 25
    stacks, images = [], {}
    for s in range(0, n, per):
        m = min(per, n - s)
        rel = f"J1/imported/{s // per:03d}_particles.mrcs"
        data = rng.normal(size=(m, box, box)).astype(np.float32)
        write_mrcs(root / rel, data)
        stacks.append(root / rel)
        images[rel] = data
    dt = [
        ("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"), ("blob/sign", "<f4"),
        ("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/psize_A", "<f4"), ("alignments3D/error", "<f4"), ("alignments3D/alpha", "<f4"),
        ("alignments3D/class_posterior", "<f4"), ("alignments3D/class", "<u4"), ("alignments3D/class_ess", "<f4"),
        ("alignments3D_multi/class_posterior", "<f4", (k,)), ("alignments2D/pose", "<f4"),
        ("alignments2D/shift", "<f4", (2,)), ("alignments2D/class", "<u4"), ("alignments2D/psize_A", "<f4"),
    ]
    rec = np.zeros(n, dtype=dt)
    rec["uid"] = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    rec["uid"][0] = np.iinfo(np.uint64).max  # full 64-bit range
    order = rng.permutation(n)  # particles not in stack order
    rels = list(images)
    for i, j in enumerate(order):
        rel = rels[j // per]
        rec["blob/path"][i] = (">" if i % 2 else "") + rel
        rec["blob/idx"][i] = j % per
    rec["blob/shape"] = box
    rec["blob/psize_A"] = 1.5
    rec["blob/sign"] = -1
    rec["alignments3D/split"] = rng.integers(0, 2, n)
    rec["alignments3D/shift"] = rng.normal(0, 2, (n, 2))
    rec["alignments3D/pose"] = rng.normal(0, 1.2, (n, 3))
    rec["alignments3D/psize_A"] = 1.5
    rec["alignments3D/error"] = rng.gamma(2.0, 2.0, n)
    rec["alignments3D/alpha"] = rng.normal(1, 0.2, n)
    post = rng.dirichlet(np.ones(k), n).astype(np.float32)
    rec["alignments3D_multi/class_posterior"] = post
    rec["alignments3D/class"] = post.argmax(1)
    rec["alignments3D/class_posterior"] = post.max(1)
    rec["alignments3D/class_ess"] = 1 / (post**2).sum(1)
    rec["alignments2D/pose"] = rng.uniform(-np.pi, np.pi, n)
    rec["alignments2D/shift"] = rng.normal(0, 2, (n, 2))
    rec["alignments2D/class"] = rng.integers(0, 5, n)
    rec["alignments2D/psize_A"] = 1.5
    main = root / "J2" / "J2_particles.cs"
    main.parent.mkdir(parents=True, exist_ok=True)
    save_cs(main, rec)
    pdt = [
        ("uid", "<u8"), ("ctf/type", "S8"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"), ("location/micrograph_uid", "<u8"),
        ("location/micrograph_path", "S48"), ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"), ("pick_stats/ncc_score", "<f4"),
        ("blob/sign", "<f4"),
    ]
    pt = np.zeros(n + 5, dtype=pdt)  # a superset of particles, in another order
    perm = rng.permutation(n + 5)
    extra_uids = rng.integers(0, 2**63, 5, dtype=np.uint64)
    pt["uid"] = np.concatenate([rec["uid"], extra_uids])[perm]
    pt["ctf/type"] = b"spline"
    pt["ctf/exp_group_id"] = 1
    pt["ctf/accel_kv"] = 300
    pt["ctf/cs_mm"] = 2.7
    pt["ctf/amp_contrast"] = 0.1
    pt["ctf/df1_A"] = rng.uniform(8000, 25000, n + 5)
    pt["ctf/df2_A"] = pt["ctf/df1_A"] + rng.uniform(0, 500, n + 5)
    pt["ctf/df_angle_rad"] = rng.uniform(-np.pi / 2, np.pi / 2, n + 5)
    pt["location/micrograph_uid"] = rng.integers(0, 2**64 - 1, n + 5, dtype=np.uint64)
    pt["location/micrograph_path"] = [f"J0/motioncorrected/mic_{i % 4:03d}.mrc".encode() for i in range(n + 5)]
    pt["location/micrograph_shape"] = [4096, 5760]
    pt["location/center_x_frac"] = rng.random(n + 5)
    pt["location/center_y_frac"] = rng.random(n + 5)
    pt["pick_stats/ncc_score"] = rng.random(n + 5)
    pt["blob/sign"] = 7  # a field also in main: main must win
    passthrough = root / "J2" / "J2_passthrough_particles.cs"
    save_cs(passthrough, pt)
    return CsProject(root, main, passthrough, stacks, images)


@pytest.fixture
def cs_project(tmp_path: Path) -> CsProject:
    return make_cs_project(tmp_path / "P1")


@dataclass
class StarProject:
    root: Path
    star: Path
    images: np.ndarray  # in file order


def make_star_project(root: Path, n: int = 40, box: int = 20, version: str = "3.1", seed: int = 1) -> StarProject:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, box, box)).astype(np.float32)
    half = n // 2
    write_mrcs(root / "Extract/job007/Movies/a.mrcs", data[:half], 1.2)
    write_mrcs(root / "Extract/job007/Movies/b.mrcs", data[half:], 1.2)
    names = [f"{i + 1:06d}@Extract/job007/Movies/a.mrcs" for i in range(half)] + [
        f"{i + 1:06d}@Extract/job007/Movies/b.mrcs" for i in range(n - half)
    ]
    df = pd.DataFrame({
        "rlnCoordinateX": rng.uniform(0, 4000, n).round(2),
        "rlnCoordinateY": rng.uniform(0, 4000, n).round(2),
        "rlnImageName": names,
        "rlnMicrographName": [f"MotionCorr/job002/Movies/mic{i % 3}.mrc" for i in range(n)],
        "rlnDefocusU": rng.uniform(8000, 25000, n).round(6),
        "rlnDefocusV": rng.uniform(8000, 25000, n).round(6),
        "rlnDefocusAngle": rng.uniform(-90, 90, n).round(6),
        "rlnCtfBfactor": np.zeros(n),
        "rlnAngleRot": rng.uniform(-180, 180, n).round(6),
        "rlnAngleTilt": rng.uniform(0, 180, n).round(6),
        "rlnAnglePsi": rng.uniform(-180, 180, n).round(6),
        "rlnClassNumber": rng.integers(1, 4, n),
        "rlnRandomSubset": rng.integers(1, 3, n),
        "rlnLogLikeliContribution": rng.normal(1e5, 10, n).round(4),
        "rlnNormCorrection": rng.normal(1, 0.1, n).round(6),
    })
    star = root / "Refine3D" / "job010" / "run_data.star"
    star.parent.mkdir(parents=True, exist_ok=True)
    if version == "3.1":
        df["rlnOriginXAngst"] = rng.normal(0, 2, n).round(6)
        df["rlnOriginYAngst"] = rng.normal(0, 2, n).round(6)
        df["rlnOpticsGroup"] = 1 + (np.arange(n) >= half)
        optics = pd.DataFrame({
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"], "rlnOpticsGroup": [1, 2],
            "rlnMicrographOriginalPixelSize": [0.6, 0.6], "rlnVoltage": [300.0, 300.0],
            "rlnSphericalAberration": [2.7, 2.7], "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnImagePixelSize": [1.2, 1.2], "rlnImageSize": [box, box], "rlnImageDimensionality": [2, 2],
        })
        starfile.write({"optics": optics, "particles": df}, star, float_format="%.6f")
    else:
        df["rlnOriginX"] = rng.normal(0, 2, n).round(6)
        df["rlnOriginY"] = rng.normal(0, 2, n).round(6)
        df["rlnVoltage"] = 300.0
        df["rlnSphericalAberration"] = 2.7
        df["rlnAmplitudeContrast"] = 0.1
        df["rlnMagnification"] = 10000.0
        df["rlnDetectorPixelSize"] = 1.2
        starfile.write({"": df}, star, float_format="%.6f")
    return StarProject(root, star, data)


@pytest.fixture
def star_project(tmp_path: Path) -> StarProject:
    return make_star_project(tmp_path / "R1")


@pytest.fixture
def run_cli(capsys):  # noqa: ANN001, ANN201
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from cryoframe.cli import main

    def _run(*argv: str | os.PathLike[str]) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary entries or stores left behind in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".cf")
