"""Layering: job modules do not import the api (no api <-> demo cycle) and modules do not reach
into other modules' private attributes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cryoframe"


def test_demo_and_synthetic_do_not_import_the_api() -> None:
    code = ("import sys, cryoframe.jobs.demo, cryoframe.demo, cryoframe.synthetic, cryoframe.testing; "
            "assert 'cryoframe.api' not in sys.modules, 'api imported'; "
            "from cryoframe.testing import synth_store; from cryoframe.synthetic import synth_store as s2; "
            "assert synth_store is s2")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_no_module_reaches_into_private_store_or_writer_state() -> None:
    bad = []
    for f in SRC.rglob("*.py"):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"(?<!self)\.(_files|_done|_image_rows|_writer|_inflight)\b", line):
                bad.append(f"{f.relative_to(SRC)}:{i}: {line.strip()}")
    assert not bad, bad
