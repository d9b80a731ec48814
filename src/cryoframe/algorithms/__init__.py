"""cryoframe.algorithms layer (see shared design: architecture)."""
