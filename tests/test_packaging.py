"""The installed wheel finds its own data files (field dictionary, default cluster configs) without
a source checkout: build the wheel, install it into a fresh venv, run verbs from an unrelated cwd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_runs_demo_and_cluster_script_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True)
    (whl,) = wheels.glob("cryoframe-*.whl")
    venv = tmp_path / "venv"
    # system site-packages give the dependencies; the venv's own site-packages come first on sys.path,
    # so its cryoframe wins over any editable install of a checkout there
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(whl)], check=True, capture_output=True)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> str:
        r = subprocess.run([str(py), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    where = Path(run("-c", "import cryoframe; print(cryoframe.__file__)").strip())
    assert where.is_relative_to(venv), where
    out = run("-m", "cryoframe", "cluster", "slurm", "--print-job-script")
    assert "#SBATCH" in out
    out = run("-m", "cryoframe", "demo", "--workdir", str(cwd / "demo"), "--particles", "200", "--box", "32")
    assert "identical" in out and (cwd / "demo").is_dir()
