"""Query layer: expression filters over store metadata (pandas/dask ``query`` syntax)."""

from cryoframe.query.expr import filter_store, query_frame

__all__ = ["filter_store", "query_frame"]
