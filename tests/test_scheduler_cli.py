"""Compute verbs run on any scheduler with identical results; scheduler errors are one line."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from cryoframe import api


@pytest.fixture(scope="module")
def toy(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("sched")
    return api.synth(d / "toy.cf", n=20_000, box=16, classes=3, kind="3d", metadata_only=True, seed=5)


def test_subset_local_cluster_identical_to_threads(toy, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    runs = {}
    for spec in ("threads", "local:2"):
        out = tmp_path / spec.replace(":", "_")
        code, stdout, err = run_cli("-q", "subset", toy.path, "--by", "error3d", "--components", "2", "--seed", "1",
                                    "--no-plots", "--scheduler", spec, "--out", out)
        assert code == 0, err
        runs[spec] = json.loads((out / "summary.json").read_text())
        runs[spec]["uids"] = [api.open_store(out / s["path"]).table(["uid"]).column(0).to_pylist()
                              for s in runs[spec]["sets"]]
    a, b = runs["threads"], runs["local:2"]
    for r in (a, b):
        assert r["gmm"].pop("fit_seconds") > 0  # the fit's own wall time, different each run
    assert a["gmm"] == b["gmm"] and a["uids"] == b["uids"]


def test_query_and_stats_take_a_scheduler(toy, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    code, _, err = run_cli("query", toy.path, "--where", "`alignments3D/error` > 10000", "--scheduler", "processes",
                           "--out", tmp_path / "q.cf")
    assert code == 0, err
    ref = api.query(toy, "`alignments3D/error` > 10000", out=tmp_path / "r.cf", scheduler="synchronous")
    assert api.open_store(tmp_path / "q.cf").table().equals(ref.table())
    code, out, _ = run_cli("stats", toy.path, "--by", "defocus", "--scheduler", "local:2", "--json", "--dashboard")
    assert code == 0 and json.loads(out)["summary"]["count"] == 20_000


def test_unreachable_scheduler_and_bad_spec_are_clear_errors(toy, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    code, _, err = run_cli("subset", toy.path, "--by", "scale", "--scheduler", f"tcp://127.0.0.1:{port}",
                           "--out", tmp_path / "x")
    assert code == 2 and f"127.0.0.1:{port}" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli("query", toy.path, "--scheduler", "bogus", "--head", "1")
    assert code == 2 and "local:N" in err
    code, _, err = run_cli("subset", toy.path, "--by", "scale", "--scheduler", "cuda", "--out", tmp_path / "y")
    assert code == 2 and ("GPU" in err or "[gpu]" in err)


def test_cluster_verb_prints_slurm_job_script(run_cli) -> None:  # noqa: ANN001
    repo = Path(__file__).resolve().parents[1]
    code, out, err = run_cli("cluster", "slurm", "--config", repo / "deploy" / "slurm.yaml", "--print-job-script")
    assert code == 0, err
    assert "#SBATCH" in out and "--cpus-per-task=8" in out


def test_bench_verb_runs_a_ratio_benchmark(run_cli) -> None:  # noqa: ANN001
    code, _, err = run_cli("bench", "nope")
    assert code == 2 and "unknown benchmark" in err
    from cryoframe.cli.bench import bench_dir

    assert (bench_dir() / "RESULTS.md").exists()


def test_bench_passes_each_script_only_flags_it_accepts(monkeypatch) -> None:  # noqa: ANN001
    import argparse
    import subprocess
    import sys

    from cryoframe.cli import bench

    real_run = subprocess.run
    calls: list[list[str]] = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert bench.main(argparse.Namespace(which=list(bench.SCRIPTS), rows=[1000], no_record=True)) == 0
    assert [Path(c[1]).name for c in calls] == list(bench.SCRIPTS.values())
    for cmd in calls:
        helptext = real_run([sys.executable, cmd[1], "--help"], capture_output=True, text=True, check=True,
                                  cwd=Path(cmd[1]).parent).stdout
        flags = [a for a in cmd[2:] if a.startswith("--")]
        assert flags and all(f in helptext for f in flags), (cmd, helptext)
    rec = next(c for c in calls if c[1].endswith("bench_reconstruct.py"))
    assert "--rows" not in rec and "--no-record" in rec
