"""The demo and the CLI wiring: every verb runs end to end from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import starfile

from cryoframe import api


def test_demo_runs_and_checks_round_trips(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    wd = tmp_path / "demo"
    code, out, err = run_cli("demo", "--workdir", wd, "--particles", "300", "--box", "32")
    assert code == 0, err
    assert "identical" in out and str(wd) in out
    for name in ("particles.cf", "hard.cf", "relion.cf", "hard_reimported.cf", "particles_reimported.cf"):
        assert (wd / name / "manifest.json").exists(), name
    assert starfile.read(wd / "hard.star", always_dict=True).keys() == {"optics", "particles"}
    # a second run replaces its own directory, but never a foreign one
    assert run_cli("demo", "--workdir", wd, "--particles", "300", "--box", "32")[0] == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    code, _, err = run_cli("demo", "--workdir", foreign)
    assert code == 2 and "not a previous demo" in err


def test_synth_cli_store_has_truth_and_images(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    out = tmp_path / "toy.cf"
    code, stdout, err = run_cli("synth", "--particles", "200", "--box", "32", "--classes", "4", "--snr", "0.1",
                                "--out", out)
    assert code == 0, err
    s = api.open_store(out)
    assert s.n == 200 and s.box == 32 and s.images().shape == (200, 32, 32)
    assert s.lineage[0]["op"] == "synth" and s.lineage[0]["params"]["snr"] == 0.1
    truth = np.load(out / "extras" / "truth.npz")
    assert len(truth["class"]) == 200 and set(np.unique(truth["class"])) <= set(range(4))
    code, stdout, _ = run_cli("synth", "--rows", "5000", "--metadata-only", "--out", tmp_path / "meta.cf")
    assert code == 0 and not api.open_store(tmp_path / "meta.cf").has_images


def test_console_script_entry_point(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cryoframe.cli", "info", str(tmp_path / "missing.cf"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such store" in r.stderr and r.stdout == ""
    r = subprocess.run([sys.executable, "-m", "cryoframe.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "cryoframe" in r.stdout


def test_export_cli_refuses_to_overwrite(tmp_path: Path, run_cli, cs_project) -> None:  # noqa: ANN001
    s = api.import_(cs_project.main, tmp_path / "a.cf", metadata_only=True)
    target = tmp_path / "x.star"
    target.write_text("keep me")
    code, _, err = run_cli("export", s.path, "--out", target)
    assert code == 2 and "already exists" in err and target.read_text() == "keep me"
    code, out, _ = run_cli("export", s.path, "--out", target, "--overwrite")
    assert code == 0 and "data_particles" in target.read_text()
    code, _, err = run_cli("export", s.path, "--out", tmp_path / "x.txt")
    assert code == 2 and "unknown export format" in err
    code, _, err = run_cli("export", s.path, "--out", tmp_path / "y.star", "--images")
    assert code == 2 and "no images" in err and not (tmp_path / "y.star").exists()
    json.dumps(api.info(s))  # info is JSON-serialisable
