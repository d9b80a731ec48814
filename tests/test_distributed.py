"""Scheduler selection, batch job scripts, the `cluster` verb and recovery from a lost worker.

Only 127.0.0.1; every cluster is closed by the scheduler() context or the `no_leaked_clusters`
fixture even when a test fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

from cryoframe.cli import cluster as cluster_cli
from cryoframe.distributed import (
    VALID_SPECS,
    SchedulerError,
    current_client,
    job_script,
    progress_context,
    scheduler,
    show_progress,
)
from cryoframe.errors import CryoframeError

REPO = Path(__file__).resolve().parents[1]
SLURM_YAML = "deploy/slurm.yaml"


@pytest.fixture(autouse=True)
def no_leaked_clusters():
    """Close any Client/cluster a failing test left behind, so later tests start clean."""
    yield
    import sys

    if "distributed" not in sys.modules:
        return
    from distributed.client import _global_clients

    for client in list(_global_clients.values()):
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


def seeded_graph(n_chunks: int = 8, delay: float = 0.0) -> da.Array:
    """A deterministic graph: seeded random chunks, a per-chunk map, a tree reduction."""
    x = da.random.RandomState(1234).random_sample((n_chunks * 1000,), chunks=1000)
    return x.map_blocks(_slow_square, delay, dtype=x.dtype).sum()


def _slow_square(block: np.ndarray, delay: float) -> np.ndarray:
    if delay:
        time.sleep(delay)
    return block * block + np.sin(block)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="cryoframe cluster")
    cluster_cli.add_args(p)
    return cluster_cli.main(p.parse_args(list(argv)))


# -- local schedulers ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["threads", "processes", "synchronous"])
def test_local_scheduler_specs_compute_a_sum(spec: str) -> None:
    x = da.arange(1000, chunks=100)
    with scheduler(spec) as info:
        assert info.kind == spec and info.client is None and info.n_workers >= 1
        assert dask.config.get("scheduler") == spec
        assert int(x.sum().compute()) == 499500
    assert dask.config.get("scheduler", None) != spec


def test_none_means_threads_without_a_client() -> None:
    with scheduler(None) as info:
        assert info.kind == "threads"


# -- spec validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["local:x", "local:0", "foo", "tcp://", "tcp://host", "tcp://:8786", "local:"])
def test_bad_specs_raise_listing_the_valid_specs(spec: str) -> None:
    with pytest.raises(SchedulerError) as err:
        with scheduler(spec):
            pass
    msg = str(err.value)
    assert repr(spec) in msg
    for valid in VALID_SPECS:
        assert valid in msg


def test_scheduler_error_is_a_cryoframe_error() -> None:
    assert issubclass(SchedulerError, CryoframeError)


def test_cuda_without_gpu_or_extra_raises_a_clear_error() -> None:
    from cryoframe.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SchedulerError, match=r"needs (the \[gpu\] extra \(pip install 'cryoframe\[gpu\]'\)|a CUDA GPU)"):
        with scheduler("cuda"):
            pass


def test_unreachable_scheduler_fails_fast_naming_the_address() -> None:
    address = f"tcp://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(SchedulerError, match=address):
        with scheduler(address):
            pass
    assert time.monotonic() - t0 < 15


# -- LocalCluster ----------------------------------------------------------------------------------

def test_local_cluster_matches_threads_bit_for_bit(capsys: pytest.CaptureFixture[str]) -> None:
    with scheduler("threads"):
        ref = seeded_graph().compute()
    with scheduler("local:2", quiet=True) as info:
        assert info.kind == "local" and info.n_workers == 2 and info.client is not None
        assert info.address.startswith("tcp://127.0.0.1:") and info.dashboard_link is None
        assert len(info.client.nthreads()) == 2
        got = dask.compute(seeded_graph())[0]  # the Client is the default inside the block
        with progress_context():  # a Client is active: no local ProgressBar is registered
            persisted = show_progress(seeded_graph())
        again = persisted.compute()
        cluster = info.client.cluster
    assert got == ref and again == ref
    assert cluster.status.name == "closed"
    assert "Completed" in capsys.readouterr().err


def test_tcp_spec_connects_to_a_running_scheduler() -> None:
    with scheduler("local:1", quiet=True) as outer:
        with scheduler(outer.address) as info:
            assert info.kind == "tcp" and info.n_workers == 1 and info.address == outer.address
            assert int(da.arange(100, chunks=10).sum().compute()) == 4950
        with scheduler(None) as reused:  # None keeps the active Client
            assert reused.kind == "client" and reused.client is outer.client
        with scheduler("threads"):  # an explicit local spec wins over the Client
            assert current_client() is None


def test_local_cluster_dashboard_is_opt_in() -> None:
    with scheduler("local:1", dashboard=True, quiet=True) as info:
        assert info.dashboard_link and info.dashboard_link.startswith("http://127.0.0.1:")
        assert ":8787/" not in info.dashboard_link


def test_killing_a_worker_mid_computation_still_gives_the_same_result() -> None:
    with scheduler("threads"):
        ref = seeded_graph(n_chunks=40).compute()
    with scheduler("local:2", quiet=True) as info:
        client = info.client
        pids = client.run(os.getpid)  # {worker address: pid}
        victim_addr, victim = sorted(pids.items())[0]
        future = client.compute(seeded_graph(n_chunks=40, delay=0.1))
        deadline = time.monotonic() + 10
        while not client.processing().get(victim_addr) and time.monotonic() < deadline:
            time.sleep(0.02)  # wait until the victim is busy with tasks
        time.sleep(0.3)
        assert not future.done()
        os.kill(victim, signal.SIGKILL)
        result = future.result(timeout=40)
        assert victim not in client.run(os.getpid).values()  # the nanny replaced the process
    assert result == ref


def test_progress_context_local_scheduler_reports_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with scheduler("threads"), progress_context(minimum=0.0):
        seeded_graph().compute()
    assert "Completed" in capsys.readouterr().err
    with scheduler("threads"), progress_context(quiet=True):
        seeded_graph().compute()
    assert capsys.readouterr().err == ""


# -- SLURM / PBS -----------------------------------------------------------------------------------

def test_slurm_job_script_has_the_configured_resources() -> None:
    from dask.utils import parse_bytes
    from dask_jobqueue.slurm import slurm_format_bytes_ceil

    script = job_script("slurm", SLURM_YAML)
    assert "#SBATCH" in script
    assert "#SBATCH --cpus-per-task=8" in script
    assert f"#SBATCH --mem={slurm_format_bytes_ceil(parse_bytes('32GB'))}" in script
    assert "#SBATCH -t 04:00:00" in script
    assert "--local-directory $TMPDIR" in script


def test_pbs_job_script_with_gpus_asks_for_them(tmp_path: Path) -> None:
    text = (REPO / "deploy/pbs.yaml").read_text().replace("gpus: 0 ", "gpus: 2 ")
    (tmp_path / "pbs.yaml").write_text(text)
    script = job_script("pbs", str(tmp_path / "pbs.yaml"))
    assert "#PBS -l select=1:ncpus=8:" in script and ":ngpus=2" in script
    assert "#PBS -l walltime=04:00:00" in script


def test_slurm_gpu_worker_config_uses_gres_and_dask_cuda(tmp_path: Path) -> None:
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text('cores: 8\nmemory: "32GB"\nwalltime: "01:00:00"\ngpus: 1\n'
                   "worker_command: dask-cuda-worker\ninterface: no-such-if0\n")
    script = job_script("slurm", str(cfg))
    assert "#SBATCH --gres=gpu:1" in script
    assert "-m dask cuda worker tcp://SCHEDULER_HOST:8786" in script


def test_slurm_config_missing_keys_names_them_and_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "partial.yaml"
    cfg.write_text("cores: 4\nqueue: short\n")
    with pytest.raises(SchedulerError) as err:
        with scheduler("slurm", config=str(cfg)):
            pass
    msg = str(err.value)
    assert str(cfg) in msg and "memory" in msg and "walltime" in msg
    with pytest.raises(SchedulerError, match="memory, walltime"):
        job_script("slurm", str(cfg))


def test_slurm_config_rejects_unknown_keys_and_missing_files(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.yaml"
    cfg.write_text('cores: 4\nmemory: "8GB"\nwalltime: "01:00:00"\nqueu: short\n')
    with pytest.raises(SchedulerError, match="unknown key.*queu"):
        job_script("slurm", str(cfg))
    with pytest.raises(SchedulerError, match="not found"):
        job_script("slurm", str(tmp_path / "absent.yaml"))


def test_slurm_cluster_with_zero_jobs_starts_and_closes_without_submitting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # any sbatch call would fail
    with scheduler("slurm", config=SLURM_YAML, workers=0, quiet=True) as info:
        assert info.kind == "slurm" and info.n_workers == 0 and info.client is not None
        assert "#SBATCH" in info.client.cluster.job_script()
        assert not info.client.cluster.workers
        cluster = info.client.cluster
    assert cluster.status.name == "closed"


def test_slurm_without_sbatch_refuses_to_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SchedulerError, match="sbatch is not on PATH"):
        with scheduler("slurm", config=SLURM_YAML, workers=2):
            pass


# -- the `cluster` verb ----------------------------------------------------------------------------

def test_cli_prints_the_slurm_job_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("slurm", "--config", SLURM_YAML, "--print-job-script") == 0
    out = capsys.readouterr().out
    assert out.startswith("#!") and "#SBATCH" in out


def test_cli_prints_the_pbs_job_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("pbs", "--print-job-script") == 0
    assert "#PBS" in capsys.readouterr().out


def test_cli_local_cluster_prints_its_address_and_stops(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("local", "--workers", "1", "--for-seconds", "0.2") == 0
    out = capsys.readouterr().out
    assert "scheduler  tcp://127.0.0.1:" in out and "--scheduler tcp://127.0.0.1:" in out


def test_cli_rejects_job_script_for_local() -> None:
    with pytest.raises(SchedulerError, match="slurm and pbs"):
        run_cli("local", "--print-job-script")


def test_no_client_is_left_behind() -> None:
    from distributed.client import _global_clients

    with scheduler("local:1", quiet=True):
        assert len(_global_clients) == 1
    assert not _global_clients
    assert threading.active_count() < 50
