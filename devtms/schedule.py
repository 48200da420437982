"""Checkpoint schedules: log-spaced, linear, or their union.

Steps count optimizer updates: the checkpoint at step t holds the weights after t updates,
so step 0 is the initialisation and step `total` the final model. Every schedule contains
both, and its steps are distinct sorted integers.

    >>> checkpoint_steps(1000, log_points=5)
    [0, 1, 5, 31, 177, 1000]
"""

from __future__ import annotations

import numpy as np


def log_steps(total: int, points: int) -> list[int]:
    """devinterp's schedule: unique(int(logspace(0, log10(total), points)))."""
    if points <= 0:
        return []
    return sorted({int(s) for s in np.logspace(0, np.log10(total), points)})


def linear_steps(total: int, every: int) -> list[int]:
    return list(range(0, total + 1, every)) if every > 0 else []


def checkpoint_steps(total: int, log_points: int = 50, linear_every: int = 0) -> list[int]:
    """Union of the log-spaced and linear schedules, always with 0 and `total`."""
    if total < 1:
        raise ValueError(f"total steps must be >= 1, got {total}")
    steps = {0, total, *log_steps(total, log_points), *linear_steps(total, linear_every)}
    return sorted(s for s in steps if 0 <= s <= total)


def log_steps_default_every(total: int, points: int = 200) -> int:
    """A linear logging interval giving about `points` loss measurements."""
    return max(1, total // points)
