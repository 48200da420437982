"""A figure to file bytes: the one place figures are saved (the report and `devtms calibrate`).

Saving runs inside `rc_context(RC)` too: tick labels and grid lines are created when the figure
is drawn, so the style must be in force then, not only while the builder ran.

    >>> png = figure_bytes(fig, "png", creator="devtms calibrate")
    >>> job = FigureJob("loss_grid", loss_grid, (curves, panels, 3000, title), caption, alt)
    >>> rendered = render(job)       # builds the figure: PNG + PDF files, a small PNG for the page

A report figure is a `FigureJob`: the builder and its arguments, not the figure. That makes it
cheap to send to a worker process (devtms.report.rendering) and lets its inputs be hashed, so
an unchanged figure is not drawn again.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from devtms.report.figures.style import RC

PNG_DPI = 110  # PDFs keep the figure's dpi: it only sets the resolution of embedded images
# Typographic ligatures (fi, fl, ff) off: a PDF embeds glyphs that stand for several characters
# in a second subset of the font, and subsetting DejaVu Sans costs ~0.13 s each time. With
# ligatures off and RC's "ps.fonttype" 42 (which sizes matplotlib's PDF font subsets too), every
# figure embeds one subset.
NO_LIGATURES = ("-liga",)
PNG_COMPRESSION = 1  # zlib level of the full-size PNGs: 30% faster to write than PIL's 6, 10% larger
PAGE_COLORS = 128  # the page's copy of a PNG: a palette of this many colours (about 1/3.5 the bytes)


def figure_bytes(fig: Figure, fmt: str, *, creator: str, dpi: int | None = None) -> bytes:
    """The figure saved as `fmt` ("png" or "pdf"); `creator` is written into its metadata.

    dpi None: the figure's own. The figure is not registered with pyplot: nothing to close.
    """
    metadata = ({"Software": creator} if fmt == "png"
                else {"Creator": creator, "Producer": "devtms"})
    for text in fig.findobj(Text):
        text.set_fontfeatures(NO_LIGATURES)
    buffer = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format=fmt, dpi="figure" if dpi is None else dpi, metadata=metadata,
                    **({"pil_kwargs": {"compress_level": PNG_COMPRESSION}} if fmt == "png" else {}))
    return buffer.getvalue()


def page_png(rgba: np.ndarray) -> bytes:
    """The copy of a figure the HTML embeds: its PNG's pixels (rgba: (height, width, 4) uint8),
    quantized to PAGE_COLORS colours.

    Plots are mostly flat colour with antialiased edges: a palette keeps them sharp and the
    page small; the full-colour PNG stays in the figures directory."""
    image = Image.fromarray(rgba, "RGBA").convert("RGB")
    palette = image.quantize(colors=PAGE_COLORS, method=Image.Quantize.FASTOCTREE,
                             dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class FigureJob:
    """A report figure to make: `build(*args)` returns the Figure.

    build must be a module-level function and args picklable (numbers, strings, DataFrames,
    arrays, dataclasses of these): the job travels to worker processes and its pickle is the
    figure's input hash."""

    stem: str  # file name without extension, and the HTML id
    build: Callable[..., Figure]
    args: tuple[Any, ...] = field(repr=False)
    caption: str
    alt: str


@dataclass
class Rendered:
    """A rendered figure of the report: its file stem, PNG and PDF bytes, the page's PNG,
    caption, alt text."""

    stem: str
    png: bytes
    pdf: bytes
    page_png: bytes
    caption: str
    alt: str


def render(job: FigureJob) -> Rendered:
    """Build the job's figure and save it: PNG and PDF, and the page's smaller PNG."""
    fig = job.build(*job.args)
    FigureCanvasAgg(fig)  # so that the PNG's pixels stay in its buffer for the page's copy
    creator = "devtms report"
    png = figure_bytes(fig, "png", creator=creator, dpi=PNG_DPI)
    page = page_png(np.asarray(fig.canvas.buffer_rgba()))  # before the PDF draws again
    return Rendered(job.stem, png, figure_bytes(fig, "pdf", creator=creator), page, job.caption,
                    job.alt)
