"""Storage layer: ParticleStore (Parquet metadata + Zarr images + manifest), import and export."""

from cryoframe.storage.exporters import export_cs, export_star
from cryoframe.storage.importers import import_cs, import_file, import_mrcs, import_star
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
