"""Jobs: thin orchestration of query + algorithms + plot into the products a user gets
(per-set stores, summaries, plots).  Sits above ``plot``; the CLI and ``cryoframe.api`` call it.

Job modules are imported on first use (``cryoframe.jobs.subset``…), so running one job does not
pay for the imports of the others."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryoframe.jobs.subset import SubsetResult

__all__ = ["SubsetResult"]


def __getattr__(name: str) -> Any:
    if name == "SubsetResult":
        from cryoframe.jobs.subset import SubsetResult

        return SubsetResult
    raise AttributeError(f"module 'cryoframe.jobs' has no attribute {name!r}")
