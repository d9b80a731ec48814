"""The three phases of ab-initio SGD and the hyperparameters annealed across them.

cryoSPARC's description: hyperparameters (learning rate, maximum resolution, noise model, class
similarity) are *fixed* at starting values during the ``initial_iterations``, *anneal* towards
their data-determined values during the ``intermediate_iterations`` and stay at those during the
``final_iterations``.  Here the anneal fraction ``a`` is 0 in the initial phase, rises linearly to
1 across the intermediate phase and is 1 in the final phase; every annealed quantity is
``start + a (end - start)`` (resolution in frequency, not Å).  Class similarity has its own
window: ``class_similarity`` until iteration ``class_similarity_anneal_start``, linearly to 0 at
``class_similarity_anneal_end``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """Iteration plan (see the module docstring); resolutions in Å, minibatches in particles."""

    initial_iterations: int
    intermediate_iterations: int
    final_iterations: int
    initial_minibatch: int
    final_minibatch: int
    initial_resolution_A: float
    max_resolution_A: float
    initial_learning_rate: float
    final_learning_rate: float
    class_similarity: float
    class_similarity_anneal_start: int
    class_similarity_anneal_end: int

    @property
    def n_iter(self) -> int:
        """Total number of SGD iterations."""
        return self.initial_iterations + self.intermediate_iterations + self.final_iterations

    def phase(self, t: int) -> str:
        """``initial``, ``intermediate`` or ``final`` for iteration ``t`` (0-based)."""
        if t < self.initial_iterations:
            return "initial"
        if t < self.initial_iterations + self.intermediate_iterations:
            return "intermediate"
        return "final"

    def anneal(self, t: int) -> float:
        """Anneal fraction ``a`` in [0, 1] at iteration ``t``."""
        if t < self.initial_iterations:
            return 0.0
        if self.intermediate_iterations <= 0:
            return 1.0
        return min(1.0, (t - self.initial_iterations + 1) / self.intermediate_iterations)

    def resolution_A(self, t: int) -> float:
        """Maximum resolution (Å) used at iteration ``t`` (linear in frequency)."""
        a = self.anneal(t)
        f = (1 - a) / self.initial_resolution_A + a / self.max_resolution_A
        return 1.0 / f

    def learning_rate(self, t: int) -> float:
        """SGD step (fraction of the running sums replaced) at iteration ``t``."""
        a = self.anneal(t)
        return self.initial_learning_rate + a * (self.final_learning_rate - self.initial_learning_rate)

    def minibatch(self, t: int) -> int:
        """Minibatch size at iteration ``t``."""
        a = self.anneal(t)
        return int(round(self.initial_minibatch + a * (self.final_minibatch - self.initial_minibatch)))

    def similarity(self, t: int) -> float:
        """Class similarity (fraction of each particle's weight spread evenly over the classes)."""
        s, e = self.class_similarity_anneal_start, self.class_similarity_anneal_end
        if t < s:
            return self.class_similarity
        if t >= e:
            return 0.0
        return self.class_similarity * (1.0 - (t - s) / max(1, e - s))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
