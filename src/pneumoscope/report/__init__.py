"""Human-readable evaluation report: case gallery and a single self-contained HTML file.

* :mod:`.gallery`: :func:`select_gallery` picks which test cases to show, grouped the
  way the seed paper did (correct NORMAL, correct PNEUMONIA, false PNEUMONIA, missed
  PNEUMONIA), and :func:`render_gallery` draws them (typically Grad-CAM overlays) as
  one PNG.
* :mod:`.html`: :func:`write_report` assembles metrics, plots, gallery and run
  information into one ``report.html`` with every image embedded as a base64 data URI,
  so the report can be e-mailed or archived as a single file and opened without a
  server or JavaScript.

Rendering uses :class:`matplotlib.figure.Figure` with an Agg canvas, never ``pyplot``,
so it is thread-safe, opens no window and leaves matplotlib's global state alone.
"""

from __future__ import annotations

from .gallery import (
    GALLERY_CELL_PX,
    GALLERY_DPI,
    GALLERY_HEADER_PX,
    GROUP_COLOURS,
    GROUP_DISPLAY_NAMES,
    GROUPS,
    GalleryTile,
    assign_groups,
    group_display_names,
    render_gallery,
    select_gallery,
)
from .html import DISCLAIMER, figure_html, write_report

__all__ = [
    "DISCLAIMER",
    "GALLERY_CELL_PX",
    "GALLERY_DPI",
    "GALLERY_HEADER_PX",
    "GROUPS",
    "GROUP_COLOURS",
    "GROUP_DISPLAY_NAMES",
    "GalleryTile",
    "assign_groups",
    "figure_html",
    "group_display_names",
    "render_gallery",
    "select_gallery",
    "write_report",
]
