"""``cryoframe view``: interactive curation in the browser (Panel + Bokeh + Datashader).

Selections (box, lasso, histogram ranges, class tiles, GMM sets, typed expressions) are
``--where`` expressions evaluated exactly like ``cryoframe query``; saving writes the same store
``cryoframe query STORE --where EXPR --out`` writes.
"""

from cryoframe.view.selection import Selection, ViewData, format_classes, format_range

__all__ = ["Selection", "ViewData", "format_classes", "format_range"]
