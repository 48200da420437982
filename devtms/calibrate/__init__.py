"""Choosing SGLD hyperparameters for a run's LLC estimates.

    grid.py   `devtms calibrate RUN --step S`: an eps x gamma (x n_beta) grid at one checkpoint,
              a table and a figure for a person to read
    auto.py   `devtms calibrate RUN --auto`: candidate settings tried against explicit
              convergence criteria at the last checkpoint; the first that passes becomes the
              run's active LLC setting
"""

from devtms.calibrate.auto import (
    AutoJob,
    AutoResult,
    Criteria,
    auto_calibrate,
    build_auto_job,
    run_auto,
)
from devtms.calibrate.grid import CalibrationJob, build_job, calibrate, parse_grid, run_calibration

__all__ = ["AutoJob", "AutoResult", "CalibrationJob", "Criteria", "auto_calibrate",
           "build_auto_job", "build_job", "calibrate", "parse_grid", "run_auto", "run_calibration"]
