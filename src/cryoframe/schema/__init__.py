"""Field dictionary, Arrow types and NumPy <-> Arrow column conversion (no I/O besides loading
the packaged ``schemas/`` data files)."""

from cryoframe.schema.fields import (
    FieldSpec,
    field_dictionary,
    field_spec,
    optics_labels,
    relion_label_map,
    schemas_dir,
)
from cryoframe.schema.types import (
    INTERNAL_PREFIX,
    arrow_field,
    arrow_to_numpy,
    is_canonical,
    is_internal,
    is_relion_label,
    numpy_dtype_of,
    numpy_to_arrow,
)

__all__ = [
    "INTERNAL_PREFIX",
    "FieldSpec",
    "arrow_field",
    "arrow_to_numpy",
    "field_dictionary",
    "field_spec",
    "is_canonical",
    "is_internal",
    "is_relion_label",
    "numpy_dtype_of",
    "numpy_to_arrow",
    "optics_labels",
    "relion_label_map",
    "schemas_dir",
]
