"""Storage layer: ParticleStore (Parquet metadata + Zarr images + manifest), import and export.

Importers and exporters (pandas, scipy) load on first use, so opening a store stays cheap.
"""

from typing import Any

from cryoframe.storage.store import IMAGE_ROW, ParticleStore, StoreWriter

__all__ = [
    "IMAGE_ROW",
    "ParticleStore",
    "StoreWriter",
    "export_cs",
    "export_star",
    "import_cs",
    "import_file",
    "import_mrcs",
    "import_star",
]

_LAZY = {"export_cs": "exporters", "export_star": "exporters", "import_cs": "importers",
         "import_file": "importers", "import_mrcs": "importers", "import_star": "importers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"cryoframe.storage.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cryoframe.storage' has no attribute {name!r}")
