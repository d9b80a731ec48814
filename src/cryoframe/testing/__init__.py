"""Deterministic synthetic cryo-EM data for tests, demos and benchmarks.

Importing this package is cheap: nothing is generated until a function is called.
"""

from cryoframe.testing.metrics import pose_recovery_errors
from cryoframe.testing.physics import (
    apply_ctf,
    ctf_2d,
    ctf_at,
    electron_wavelength_A,
    freq_grid,
    project,
)
from cryoframe.testing.synth import (
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
