"""cryoframe.plot layer (see shared design: architecture)."""
