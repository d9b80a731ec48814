"""Shared by the bench scripts: machine description and appending results to RESULTS.md."""

from __future__ import annotations

import os
import platform
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
