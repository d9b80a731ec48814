"""Plot layer: draws precomputed numbers (histogram counts, GMM parameters, poses, images) as figures.

It never computes statistics or fits.  Importing it is cheap: HoloViews, matplotlib and bokeh are
imported only when a figure is built or saved.  Figures are HoloViews objects; :func:`save_figure`
writes them as PNG (matplotlib, headless) and self-contained HTML (bokeh, resources inline).
"""

from typing import Any

__all__ = [
    "PALETTE",
    "gallery_figure",
    "histogram_figure",
    "save_figure",
    "viewing_direction_figure",
    "viewing_directions_from_rotvec",
]


def __getattr__(name: str) -> Any:  # lazy: the plot worker imports plot.quick without the HoloViews side
    if name in __all__:
        from cryoframe.plot import figures

        return getattr(figures, name)
    raise AttributeError(name)
