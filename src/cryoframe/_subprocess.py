"""Helper processes: ``python -m MODULE`` children that talk to the job over pickles on stdin/stdout.

Two jobs use one: the plot worker (:mod:`cryoframe.plot.worker`: matplotlib loads and draws on the
other core) and the kernel worker (:mod:`cryoframe.geometry._kernel_worker`: numba loads and inserts
on the other core).  Both start at once, while the job is still importing and reading, so their
start-up (pure-Python imports holding a GIL) runs in parallel with the job's instead of after it.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["kill", "spawn_module"]


def spawn_module(module: str, *, disable_env: str | None = None) -> subprocess.Popen[bytes] | None:
    """Start ``python -m module`` with pipes on stdin, stdout and stderr; None where ``disable_env``
    is set to ``1`` or no subprocess can start (the caller then works in-process)."""
    if disable_env is not None and os.environ.get(disable_env) == "1":
        return None
    env = dict(os.environ)  # the child imports cryoframe from wherever this process did (sys.path)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        return subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError:  # no subprocess here (sandbox, fd limits)
        return None


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs and reap it (its pipes closed)."""
    if proc.poll() is None:
        proc.kill()
        proc.stdin = None
        proc.communicate()
