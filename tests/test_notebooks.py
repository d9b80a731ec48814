"""The walkthrough notebooks execute top to bottom (they are part of the documentation)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["01_curation.ipynb", "02_cluster.ipynb", "03_3d.ipynb"])
def test_notebook_executes(name: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("CRYOFRAME_NB_WORKDIR", str(tmp_path))
    nb = nbformat.read(NB / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert str(tmp_path) in text  # it really ran here, on fresh data
    if name == "03_3d.ipynb":  # the 3D tour's outcome: the poseless particles' states separate downstream
        ari = re.search(r"adjusted Rand index against the true states: ([0-9.]+)", text)
        assert ari is not None and float(ari.group(1)) >= 0.9, text
