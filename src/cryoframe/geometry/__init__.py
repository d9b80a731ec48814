"""Geometry of cryo-EM image formation in one place: rotations and shifts (cryoSPARC/RELION
conventions), the CTF, Fourier central slices (projection and back-projection), symmetry groups,
masks, reconstruction from Fourier sums and the FSC.  NumPy or CuPy through an ``xp`` argument."""

from cryoframe.geometry.ctf import CTF_PARAMS, ctf_at, ctf_grid, electron_wavelength_A
from cryoframe.geometry.rotations import (
    euler_to_pose,
    euler_to_relion_matrix,
    matrix_to_pose,
    pose_matrix,
    pose_to_euler,
)

__all__ = ["CTF_PARAMS", "ctf_at", "ctf_grid", "electron_wavelength_A", "euler_to_pose", "euler_to_relion_matrix",
           "matrix_to_pose", "pose_matrix", "pose_to_euler"]
