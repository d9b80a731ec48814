"""cryoframe.distributed layer (see shared design: architecture)."""
