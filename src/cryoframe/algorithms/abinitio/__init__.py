"""Ab-initio reconstruction (cryoSPARC's Ab-Initio Reconstruction, Punjani et al. 2017):
:class:`AbInitio` fits K volumes to particles without poses by stochastic gradient descent over
growing minibatches, with poses from the branch-and-bound search of
:mod:`cryoframe.algorithms.posesearch`.

``schedule`` holds the three phases (initial / intermediate / final iterations) and the annealed
hyperparameters, ``data`` the Fourier components of the particles, ``model`` the estimator.
"""

from cryoframe.algorithms.abinitio.model import AbInitio
from cryoframe.algorithms.abinitio.schedule import Schedule

__all__ = ["AbInitio", "Schedule"]
