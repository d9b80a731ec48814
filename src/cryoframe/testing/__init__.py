"""Test helpers: metrics, image-formation physics, and (re-exported from :mod:`cryoframe.synthetic`)
the deterministic synthetic data generators.

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

_SYNTHETIC = {"BLOCK", "MIXTURES", "OPTICS", "SynthDataset", "is_main_field", "make_metadata", "make_particles",
              "make_templates", "make_truth", "make_volumes", "synth_store", "write_cs_dataset", "write_star_dataset"}


def __getattr__(name: str) -> object:
    """The generators live in :mod:`cryoframe.synthetic` (which imports this package's physics),
    so they are re-exported lazily, on first access."""
    if name in _SYNTHETIC:
        import cryoframe.synthetic

        return getattr(cryoframe.synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
