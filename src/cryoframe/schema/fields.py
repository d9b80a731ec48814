"""The field dictionary: canonical (cryoSPARC-named) fields, their dtypes, units and RELION labels.

The dictionary is data (``schemas/fields.json`` at the repository root, packaged as
``cryoframe/_schemas`` in wheels); this module only loads and indexes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryoframe.errors import SchemaError

__all__ = ["FieldSpec", "field_dictionary", "field_spec", "optics_labels", "relion_label_map", "schemas_dir"]


@dataclass(frozen=True)
class FieldSpec:
    """One canonical field: ``dtype`` is a NumPy dtype string ('|S' = fixed bytes of any length)."""

    field: str
    dtype: str
    shape: tuple[int, ...] | None
    unit: str | None
    description: str
    relion: tuple[str, ...]
    conversion: str | None
    relion_block: str | None


def schemas_dir() -> Path:
    """Directory holding the schema data files (``cryoframe/_schemas`` of the installed package; the
    checkout's ``schemas/`` for an editable install)."""
    from cryoframe._resources import package_data

    d = package_data("_schemas", "schemas")
    if d is None:
        raise SchemaError("cannot find the schemas/ directory (is cryoframe installed correctly?)")
    return d


@lru_cache(maxsize=1)
def _raw() -> dict[str, Any]:
    path = schemas_dir() / "fields.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: cannot read field dictionary: {exc}") from exc
    if not isinstance(raw, dict):
        raise SchemaError(f"{path}: field dictionary must be a JSON object, found {type(raw).__name__}")
    return raw


@lru_cache(maxsize=1)
def field_dictionary() -> dict[str, FieldSpec]:
    """All known canonical fields keyed by name."""
    out: dict[str, FieldSpec] = {}
    for d in _raw()["fields"]:
        out[d["field"]] = FieldSpec(
            field=d["field"],
            dtype=d["dtype"],
            shape=tuple(d["shape"]) if d.get("shape") else None,
            unit=d.get("unit"),
            description=d.get("description", ""),
            relion=tuple(d.get("relion") or ()),
            conversion=d.get("conversion"),
            relion_block=d.get("relion_block"),
        )
    return out


def field_spec(name: str) -> FieldSpec | None:
    """The dictionary entry of ``name`` or None when the field is not a standard one."""
    return field_dictionary().get(name)


def relion_label_map() -> dict[str, list[str]]:
    """RELION label -> canonical fields that it maps onto."""
    out: dict[str, list[str]] = {}
    for spec in field_dictionary().values():
        for label in spec.relion:
            out.setdefault(label, []).append(spec.field)
    return out


def optics_labels() -> frozenset[str]:
    """RELION labels that live in the ``data_optics`` block of RELION >= 3.1 files."""
    return frozenset(_raw()["relion_optics_labels"])
