"""cryoframe: cryo-EM particle curation and classification as a distributed dataframe system.

Particle images live in chunked Zarr v3 arrays, metadata in Parquet tables keyed by ``uid``;
queries and algorithms run as Dask graphs on NumPy (CPU) or CuPy (GPU).  Nothing heavy runs at
import time: ``import cryoframe`` only defines names.
"""

from cryoframe.errors import CryoframeError, FormatError, InputError, SchemaError, StoreError

__version__ = "0.1.0"

__all__ = ["CryoframeError", "FormatError", "InputError", "SchemaError", "StoreError", "__version__"]
