"""How the report writes values as text: numbers in titles and table cells, and HTML ids."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

MISSING = "—"  # what a missing or non-finite value is shown as


def fmt(v: Any) -> str:
    """A value as the report shows it: 4 significant digits, yes/no, — for missing."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return MISSING
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        if v == 0:
            return "0"
        return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def slug(text: str) -> str:
    """A fragment id or file stem from any text: letters, digits and _ . - only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"
