"""Data files that ship inside the package: found through :mod:`importlib.resources`.

A wheel carries them under ``cryoframe/_schemas`` (the field dictionary, from ``schemas/``) and
``cryoframe/_deploy`` (default SLURM/PBS cluster configs, from ``deploy/*.yaml``), force-included by
the hatch build (pyproject.toml).  Only when cryoframe runs from a source checkout (an editable
install: ``src/cryoframe`` beside ``pyproject.toml``) are the repository's own folders used instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["checkout_root", "package_data"]


def _package_dir() -> Path:
    return Path(str(resources.files("cryoframe")))


def checkout_root() -> Path | None:
    """The repository root when cryoframe is imported from a source checkout (src layout), else None."""
    pkg = _package_dir()
    root = pkg.parent.parent
    if pkg.parent.name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def package_data(packaged: str, checkout: str) -> Path | None:
    """``cryoframe/<packaged>`` of the installed package, else ``<checkout root>/<checkout>`` for an
    editable install; None when neither exists."""
    p = _package_dir() / packaged
    if p.exists():
        return p
    root = checkout_root()
    if root is not None and (root / checkout).exists():
        return root / checkout
    return None
