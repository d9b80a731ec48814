"""Compatibility: the synthetic-data generators moved to :mod:`cryoframe.synthetic` (user verbs
``cryoframe synth`` and ``cryoframe demo`` use them); this module re-exports them."""

from cryoframe.synthetic.files import SynthDataset, write_cs_dataset, write_star_dataset
from cryoframe.synthetic.generators import (
    BATCH,
    BLOCK,
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

__all__ = ["BATCH", "BLOCK", "MIXTURES", "OPTICS", "SynthDataset", "is_main_field", "make_metadata", "make_particles",
           "make_templates", "make_truth", "make_volumes", "synth_store", "write_cs_dataset", "write_star_dataset"]
