"""Compatibility: the image-formation helpers moved to :mod:`cryoframe.synthetic.physics` (the
generators of the user verbs ``synth`` and ``demo`` use them); this module re-exports them.  The
CTF itself is :mod:`cryoframe.geometry.ctf`."""

from cryoframe.synthetic.physics import (
    apply_ctf,
    blob_model,
    ctf_2d,
    ctf_at,
    electron_wavelength_A,
    freq_grid,
    project,
    project_blobs,
    render_blobs,
    render_blobs_3d,
    rot2d,
)

__all__ = [
    "apply_ctf",
    "blob_model",
    "ctf_2d",
    "ctf_at",
    "electron_wavelength_A",
    "freq_grid",
    "project",
    "project_blobs",
    "render_blobs",
    "render_blobs_3d",
    "rot2d",
]
