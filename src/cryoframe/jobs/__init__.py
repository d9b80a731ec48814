"""Jobs: thin orchestration of query + algorithms + plot into the products a user gets
(per-set stores, summaries, plots).  Sits above ``plot``; the CLI and ``cryoframe.api`` call it."""

from cryoframe.jobs.subset import SubsetResult, subset

__all__ = ["SubsetResult", "subset"]
