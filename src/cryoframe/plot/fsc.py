"""FSC curve figure (precomputed FSC values only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cryoframe.plot.figures import _hv, _opts

__all__ = ["fsc_figure"]


def fsc_figure(freq: np.ndarray, curves: dict[str, np.ndarray], *, title: str = "FSC") -> Any:
    """FSC against spatial frequency (1/Å): one curve per entry of ``curves`` and dashed lines at 0.143
    and 0.5."""
    hv = _hv()
    items = [hv.Curve((np.asarray(freq), np.asarray(c)), "frequency (1/Å)", "FSC", label=name)
             for name, c in curves.items()]
    items += [hv.HLine(t) for t in (0.143, 0.5)]
    ov = hv.Overlay(items)
    return _opts(ov, title=title, mpl={"fig_size": 150}, bokeh={"width": 600, "height": 350})
