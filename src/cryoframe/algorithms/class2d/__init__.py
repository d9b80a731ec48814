"""Reference-free 2D classification: :class:`Class2D` (EM or VDAM; random or MSA initialisation).

``model`` holds the estimator, ``estep`` the per-partition E-step kernels (NumPy or CuPy through
an ``xp`` argument), ``init`` the initial averages and re-seeding.  Importing is cheap.
"""

from cryoframe.algorithms.class2d.model import Class2D

__all__ = ["Class2D"]
