"""Progress bars for long work: one place decides when they show.

Bars go to stderr and show only when stderr is a terminal, so logs, pipes and tests stay
clean; TQDM_DISABLE=1 silences them in a terminal too.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0,
                 enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr; `enabled=False` (a caller's --quiet or progress=False) hides it."""
    disabled = (not enabled or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
                or not sys.stderr.isatty())
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disabled,
                dynamic_ncols=True, file=sys.stderr)
