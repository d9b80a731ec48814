"""Killing a process mid-write never leaves a partial store: the old state or the new one, and the
debris of the dead writer is cleaned up by the next write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cryoframe import api

WRITER = """
import sys
from cryoframe.testing import synth_store
synth_store(sys.argv[1], int(sys.argv[2]), kind="3d", metadata_only=True, overwrite=True, seed=1, batch_size=20000)
"""


def _kill_mid_write(out: Path, rows: int) -> None:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(rows)])
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the temporary store has data in it
        tmp = list(out.parent.glob(f".{out.name}.tmp-*"))
        if tmp and any((tmp[0] / "metadata").glob("*.parquet")):
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL


def test_killed_writer_leaves_no_store_then_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "big.cf"
    _kill_mid_write(out, 3_000_000)
    assert not out.exists()
    assert list(tmp_path.glob(".big.cf.tmp-*"))  # the dead writer's debris, hidden
    s = api.synth(out, n=1000, box=16, metadata_only=True, seed=2)
    assert s.n == 1000 and not list(tmp_path.glob(".big.cf.tmp-*"))


def test_killed_overwrite_keeps_the_old_store(tmp_path: Path) -> None:
    out = tmp_path / "s.cf"
    old = api.synth(out, n=500, box=16, metadata_only=True, seed=3)
    uids = old.table(["uid"]).column(0).to_numpy()
    _kill_mid_write(out, 3_000_000)
    again = api.open_store(out)
    assert again.n == 500 and np.array_equal(again.table(["uid"]).column(0).to_numpy(), uids)
