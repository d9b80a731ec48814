"""3D classification without alignment: :class:`Class3D` (model), E-step and M-step helpers,
initialisation and checkpoints."""

from cryoframe.algorithms.class3d.model import Class3D

__all__ = ["Class3D"]
