"""RELION ``.star`` files through the ``starfile`` package.

:func:`read_particles_star` finds the particle and optics blocks of RELION 3.0 (one data block
with per-particle optics columns) and 3.1+ (``data_optics`` + ``data_particles``) files and
validates what the rest of cryoframe relies on.  :func:`write_particles_star` writes RELION 3.1
files atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cryoframe.errors import FormatError
from cryoframe.storage.atomic import atomic_path

__all__ = ["StarParticles", "read_particles_star", "write_particles_star"]


@dataclass
class StarParticles:
    particles: pd.DataFrame
    optics: pd.DataFrame | None
    version: str  # "3.0" or "3.1"
    block: str


def read_particles_star(path: str | os.PathLike[str]) -> StarParticles:
    """Read a RELION particle ``.star`` file; :class:`FormatError` names the file and what is wrong."""
    import starfile

    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such .star file")
    try:
        blocks = starfile.read(p, always_dict=True)
    except Exception as exc:
        raise FormatError(f"{p}: not a readable STAR file ({exc})") from exc
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if not tables:
        raise FormatError(f"{p}: no data loop found (expected a data_particles or data_ block with loop_)")
    optics = tables.get("optics")
    if "particles" in tables:
        name = "particles"
    else:
        cands = [k for k, v in tables.items() if k != "optics" and "rlnImageName" in v.columns]
        cands = cands or [k for k, v in tables.items() if k != "optics"]
        if not cands:
            raise FormatError(f"{p}: only a data_optics block; expected data_particles")
        name = cands[0]
    df = tables[name].copy()
    if len(df) == 0:
        raise FormatError(f"{p}: block data_{name} has no particles")
    if "rlnImageName" not in df.columns and not {"rlnCoordinateX", "rlnCoordinateY"} <= set(df.columns):
        raise FormatError(
            f"{p}: block data_{name} lacks required column rlnImageName (or rlnCoordinateX/Y for picks); "
            f"columns are: {', '.join(df.columns)}"
        )
    version = "3.0"
    if optics is not None:
        optics = optics.copy()
        version = "3.1"
        if "rlnOpticsGroup" not in optics.columns:
            raise FormatError(f"{p}: data_optics lacks required column rlnOpticsGroup")
        if "rlnOpticsGroup" not in df.columns:
            raise FormatError(f"{p}: data_{name} lacks rlnOpticsGroup although the file has data_optics")
        missing = set(df["rlnOpticsGroup"].unique()) - set(optics["rlnOpticsGroup"].unique())
        if missing:
            raise FormatError(f"{p}: rlnOpticsGroup {sorted(int(m) for m in missing)} used by particles but not defined in data_optics")
        if optics["rlnOpticsGroup"].duplicated().any():
            raise FormatError(f"{p}: data_optics defines an rlnOpticsGroup twice")
    return StarParticles(particles=df, optics=optics, version=version, block=name)


def write_particles_star(path: str | os.PathLike[str], particles: pd.DataFrame, optics: pd.DataFrame | None) -> None:
    """Write a RELION 3.1 particle file (``data_optics`` + ``data_particles``), atomically.

    Floats are written with the shortest representation that reads back to the same value.
    """
    import starfile

    path = Path(path)
    data = {}
    if optics is not None:
        data["optics"] = optics
    data["particles"] = particles
    with atomic_path(path) as tmp:
        starfile.write(data, tmp, float_format=None, sep="\t")
