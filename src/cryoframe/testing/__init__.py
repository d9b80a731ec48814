"""Test helpers: metrics, and (re-exported from :mod:`cryoframe.synthetic`) the image-formation
physics and the deterministic synthetic data generators.

Importing this package is cheap: nothing is generated until a function is called.
"""

from cryoframe.synthetic import (
    BLOCK,
    MIXTURES,
    OPTICS,
    SynthDataset,
    is_main_field,
    make_metadata,
    make_particles,
    make_templates,
    make_truth,
    make_volumes,
    synth_store,
    write_cs_dataset,
    write_star_dataset,
)
from cryoframe.testing.metrics import pose_recovery_errors
from cryoframe.testing.physics import (
    apply_ctf,
    ctf_2d,
    ctf_at,
    electron_wavelength_A,
    freq_grid,
    project,
)

__all__ = [
    "BLOCK",
    "MIXTURES",
    "OPTICS",
    "SynthDataset",
    "apply_ctf",
    "ctf_2d",
    "ctf_at",
    "electron_wavelength_A",
    "freq_grid",
    "is_main_field",
    "make_metadata",
    "make_particles",
    "make_templates",
    "make_truth",
    "make_volumes",
    "pose_recovery_errors",
    "project",
    "synth_store",
    "write_cs_dataset",
    "write_star_dataset",
]
