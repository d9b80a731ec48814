"""Shared by the bench scripts: machine description and appending results to RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    """CPU model, cores, RAM, Python and OS, for the RESULTS.md headers."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, {platform.system()}"


def record(lines: list[str]) -> None:
    """Append a results section to bench/RESULTS.md."""
    with (HERE / "RESULTS.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"recorded in {HERE / 'RESULTS.md'}")


def run_timed(cmd: list[str], cwd: Path) -> float:
    """Run a peer's command (printed first) in ``cwd``; its wall seconds.  A failure raises with the
    ends of its output."""
    print(" ".join(cmd), flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
    return wall
