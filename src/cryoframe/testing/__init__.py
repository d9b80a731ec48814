"""Test helpers: metrics (:mod:`.metrics`), the K-state 3D stores (:mod:`.states3d`), and, re-exported
for tests and notebooks, the synthetic data generators of :mod:`cryoframe.synthetic` and the
image-formation helpers of :mod:`cryoframe.synthetic.physics`.

Importing this package is cheap: nothing is generated until a function is called.
"""

from cryoframe import synthetic as _synthetic
from cryoframe.synthetic import *  # noqa: F403  (every generator, under the names listed in its __all__)
from cryoframe.synthetic.physics import apply_ctf, ctf_2d, ctf_at, electron_wavelength_A, freq_grid, project
from cryoframe.testing.metrics import pose_recovery_errors

__all__ = [*_synthetic.__all__, "apply_ctf", "ctf_2d", "ctf_at", "electron_wavelength_A", "freq_grid",
           "pose_recovery_errors", "project"]
