"""A figure to file bytes: the one place figures are saved (the report and `devtms calibrate`).

Saving runs inside `rc_context(RC)` too: tick labels and grid lines are created when the figure
is drawn, so the style must be in force then, not only while the builder ran.

    >>> png = figure_bytes(fig, "png", creator="devtms calibrate")
    >>> rendered = render(fig, "loss_grid", caption, alt)       # PNG + PDF for the report
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib
from matplotlib.figure import Figure

from devtms.report.figures.style import RC

PNG_DPI = 110  # PDFs keep the figure's dpi: it only sets the resolution of embedded images


def figure_bytes(fig: Figure, fmt: str, *, creator: str, dpi: int | None = None) -> bytes:
    """The figure saved as `fmt` ("png" or "pdf"); `creator` is written into its metadata.

    dpi None: the figure's own. The figure is not registered with pyplot: nothing to close.
    """
    metadata = ({"Software": creator} if fmt == "png"
                else {"Creator": creator, "Producer": "devtms"})
    buffer = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format=fmt, dpi="figure" if dpi is None else dpi, metadata=metadata)
    return buffer.getvalue()


@dataclass
class Rendered:
    """A rendered figure of the report: its file stem, PNG and PDF bytes, caption, alt text."""

    stem: str
    png: bytes
    pdf: bytes
    caption: str
    alt: str


def render(fig: Figure, stem: str, caption: str, alt: str) -> Rendered:
    """PNG and PDF of a report figure."""
    creator = "devtms report"
    return Rendered(stem, figure_bytes(fig, "png", creator=creator, dpi=PNG_DPI),
                    figure_bytes(fig, "pdf", creator=creator), caption, alt)
