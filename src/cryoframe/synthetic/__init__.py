"""Deterministic synthetic cryo-EM data for ``cryoframe synth``, ``cryoframe demo``, tests and benchmarks.

``generators``: ground truth, 2D templates, 3D volumes, particle images and metadata (pure
functions of the seed and the particle index); ``files``: cryoSPARC/RELION project writers;
``store``: a synthetic ParticleStore.  Importing is cheap: nothing is generated until called.
"""

from cryoframe.synthetic.files import SynthDataset, write_cs_dataset, write_star_dataset
from cryoframe.synthetic.generators import (
    BLOCK,
    JUNK_KINDS,
    MIXTURES,
    OPTICS,
    is_main_field,
    make_metadata,
    make_particles,
    make_templates,
    make_truth,
    make_volumes,
)
from cryoframe.synthetic.store import synth_store

__all__ = [
    "BLOCK",
    "JUNK_KINDS",
    "MIXTURES",
    "OPTICS",
    "SynthDataset",
    "is_main_field",
    "make_metadata",
    "make_particles",
    "make_templates",
    "make_truth",
    "make_volumes",
    "synth_store",
    "write_cs_dataset",
    "write_star_dataset",
]
