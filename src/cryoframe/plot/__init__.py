"""Plot layer: draws precomputed numbers (histogram counts, GMM parameters, poses, images) as figures.

It never computes statistics or fits.  Importing it is cheap: HoloViews, matplotlib and bokeh are
imported only when a figure is built or saved.  Figures are HoloViews objects; :func:`save_figure`
writes them as PNG (matplotlib, headless) and self-contained HTML (bokeh, resources inline).
"""

from cryoframe.plot.figures import (
    PALETTE,
    gallery_figure,
    histogram_figure,
    save_figure,
    viewing_direction_figure,
    viewing_directions_from_rotvec,
)

__all__ = [
    "PALETTE",
    "gallery_figure",
    "histogram_figure",
    "save_figure",
    "viewing_direction_figure",
    "viewing_directions_from_rotvec",
]
