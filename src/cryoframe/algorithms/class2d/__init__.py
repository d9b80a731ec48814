"""Reference-free 2D classification: :class:`Class2D` (EM or VDAM; random or MSA initialisation).

``model`` holds the estimator, ``estep`` the per-partition E-step kernels (NumPy or CuPy through
an ``xp`` argument), ``mstep`` the M-step on the driver, ``checkpoint`` the per-iteration state on
disk, ``init`` the initial averages and re-seeding.  Importing is cheap.
"""

from cryoframe.algorithms.class2d.model import Class2D

__all__ = ["Class2D"]
