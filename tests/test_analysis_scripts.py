"""Smoke tests of the analysis/ scripts: each runs end to end at its --smoke size in a subprocess
(train, `devtms llc` where the study has one, analyze, figures) and writes figures that decode as
images; a rerun skips the finished stages.

--smoke is the tiniest size that still runs every stage and draws every figure (a few hundred
steps, two-chain LLCs, low-resolution PNGs); the numbers mean nothing. The whole file takes
about a minute on 2 idle cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every script end to end: about a minute

REPO = Path(__file__).resolve().parents[1]

# script -> every figure it writes (PNG names under OUT/figures)
SCRIPTS = {
    "anthropic_intro.py": ["intro_features", "sweep_dims"],
    "activation_functions.py": ["wtw", "phase_diagram", "dims_per_feature", "dims_per_feature_grid"],
    # at --smoke, nine of the 29 activations: two W^T W figures of eight rows
    "activation_functions_27.py": ["wtw_1", "wtw_2", "phase_diagram", "dims_per_feature",
                                   "dims_per_feature_grid"],
    "devinterp_tms.py": ["tms_loss_llc", "act27_loss", "act27_llc", "act27_final",
                         "act27_summary"],
    "chen2023_kgons.py": ["kgon_sequences", "trajectories", "kgon_loss_llc", "final_kgons"],
    "chen2023_bayes.py": ["journeys", "llc_check", "implied_llc"],
    "llc_carry.py": ["llc_carry"],
}


def run_script(name: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "analysis" / name), "--smoke", "--no-pdf",
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_analysis_script_runs_end_to_end_and_writes_its_figures(script: str,
                                                                tmp_path: Path) -> None:
    from matplotlib.image import imread

    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for fig in SCRIPTS[script]:
        image = imread(tmp_path / "figures" / f"{fig}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, fig
    assert not list((tmp_path / "figures").glob("*.pdf")), "--no-pdf wrote PDFs"


def test_a_rerun_skips_finished_training_and_llc(tmp_path: Path) -> None:
    first = run_script("chen2023_kgons.py", tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "chen2023: training 2 instances" in first.stdout
    second = run_script("chen2023_kgons.py", tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training complete, skipped" in second.stdout
    assert "LLC complete, skipped" in second.stdout
    assert "devtms llc" not in second.stdout
