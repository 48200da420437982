"""Smoke tests of the analysis/ scripts: each runs end to end at its --small size in a subprocess,
writes its figures as images that decode, and a second run skips the finished work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# script -> figures it must write (PNG names under OUT/figures)
SCRIPTS = {
    "anthropic_intro.py": ["intro_features", "sweep_dims"],
    "activation_functions.py": ["wtw", "phase_diagram", "dims_per_feature", "dims_per_feature_grid"],
    "activation_functions_27.py": ["wtw_1", "wtw_4", "phase_diagram", "dims_per_feature"],
    "devinterp_tms.py": ["tms_loss_llc", "act27_loss", "act27_final", "act27_summary"],
    "chen2023_kgons.py": ["kgon_sequences", "trajectories", "kgon_loss_llc", "final_kgons"],
}


def run_script(name: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "analysis" / name), "--small", "--no-pdf",
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_analysis_script_runs_at_small_size_and_resumes(script: str, tmp_path: Path) -> None:
    from matplotlib.image import imread

    out = tmp_path / "out"
    first = run_script(script, out)
    assert first.returncode == 0, first.stderr[-3000:]
    for fig in SCRIPTS[script]:
        image = imread(out / "figures" / f"{fig}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, fig
    second = run_script(script, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training complete, skipped" in second.stdout
    assert "training " not in second.stdout.replace("training complete, skipped", "")
