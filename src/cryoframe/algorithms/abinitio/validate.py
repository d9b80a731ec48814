"""Parameter checks of :class:`~cryoframe.algorithms.abinitio.AbInitio` (the CLI's option names in
the messages)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoframe.errors import InputError
from cryoframe.geometry.symmetry import symmetry_matrices
from cryoframe.types import check_seed

__all__ = ["validate"]


def validate(m: Any, n: int, box: int) -> None:
    """The checks of :meth:`AbInitio._validate <cryoframe.algorithms.abinitio.AbInitio>`: one clear
    :class:`~cryoframe.errors.InputError` naming the option, before anything is computed or written."""
    nyq = 2 * m.psize_A
    if m.n_classes < 1:
        raise InputError(f"--classes must be >= 1 (got {m.n_classes})")
    if m.n_classes > n:
        raise InputError(f"--classes {m.n_classes} is larger than the number of particles ({n})")
    if not (isinstance(m.n_starts, int | np.integer) and m.n_starts >= 1):
        raise InputError(f"--starts must be an integer >= 1 (got {m.n_starts!r})")
    for flag, v in (("--max-resolution", m.max_resolution_A), ("--initial-resolution", m.initial_resolution_A)):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise InputError(f"{flag} must be a positive number of Å (got {v})")
    if not m.max_resolution_A >= nyq - 1e-9:
        raise InputError(f"--max-resolution {m.max_resolution_A} Å is beyond Nyquist ({nyq:.3f} Å at "
                         f"{m.psize_A:.4f} Å/px)")
    if m.initial_resolution_A is not None and not m.initial_resolution_A >= m.max_resolution_A:
        raise InputError(f"--initial-resolution {m.initial_resolution_A} Å must be >= --max-resolution "
                         f"{m.max_resolution_A} Å")
    if m.noise_model not in ("coloured", "white"):
        raise InputError(f"--noise-model {m.noise_model!r}: expected coloured or white")
    if not 0 <= m.class_similarity <= 1:
        raise InputError(f"--class-similarity must be in [0, 1] (got {m.class_similarity})")
    for name in ("initial_minibatch", "final_minibatch"):
        if getattr(m, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("initial_learning_rate", "final_learning_rate"):
        if not 0 < getattr(m, name) <= 1:
            raise InputError(f"--{name.replace('_', '-')} must be in (0, 1]")
    if min(m.initial_iterations, m.n_intermediate(), m.final_iterations) < 0:
        raise InputError("iteration counts must be >= 0")
    if m.final_passes < 1:
        raise InputError("--final-passes must be >= 1")
    _validate_search(m)
    symmetry_matrices(m.symmetry)


def _validate_search(m: Any) -> None:
    """The pose-search, noise and seed parameters (a zero step built an endless grid until the
    process was killed, leaving its temporary output; others failed deep in NumPy or ran on
    meaningless values)."""
    for flag, v in (("--coarse-step", m.coarse_step_deg), ("--final-coarse-step", m.final_coarse_step_deg)):
        if not 0 < v <= 180:
            raise InputError(f"{flag} must be in (0, 180] degrees (got {v})")
    if not 0 < m.fine_step_deg <= min(m.coarse_step_deg, m.final_coarse_step_deg):
        raise InputError(f"--fine-step must be in (0, {min(m.coarse_step_deg, m.final_coarse_step_deg)}] "
                         f"degrees, at most the coarse steps (got {m.fine_step_deg})")
    if not m.shift_range_px >= 0:
        raise InputError(f"--shift-range must be >= 0 px (got {m.shift_range_px})")
    if not m.shift_step_px > 0:
        raise InputError(f"--shift-step must be > 0 px (got {m.shift_step_px})")
    if m.n_candidates < 1:
        raise InputError(f"--candidates must be >= 1 (got {m.n_candidates})")
    if m.soft_candidates < 1:
        raise InputError(f"soft_candidates must be >= 1 (got {m.soft_candidates})")
    if not m.noise_init_sigmascale > 0:
        raise InputError(f"--noise-init-sigmascale must be > 0 (got {m.noise_init_sigmascale})")
    if not m.noise_priorw >= 0:
        raise InputError(f"--noise-priorw must be >= 0 (got {m.noise_priorw})")
    a0, a1 = m.class_similarity_anneal_start, m.class_similarity_anneal_end
    if (a0 is not None and a0 < 0) or (a1 is not None and a1 < 0):
        raise InputError("--class-similarity-anneal-start and --class-similarity-anneal-end must be >= 0")
    if a0 is not None and a1 is not None and a1 < a0:
        raise InputError(f"--class-similarity-anneal-end {a1} is before --class-similarity-anneal-start {a0}")
    check_seed(m.random_state, "--seed")
