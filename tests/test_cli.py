"""The `devtms` process itself: what it imports to answer --help, and a reader that goes away.

Both run the real CLI in a fresh interpreter: start-up cost and pipes are properties of a
process, not of a function.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Runs the CLI's main as `devtms ARGS` does, then reports which heavy modules it imported.
IMPORTS_AFTER = r"""
import contextlib, io, sys
from devtms.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(sorted(m for m in ("torch", "pandas", "numpy", "matplotlib") if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["llc", "--help"],
                                  ["study", "--help"], ["report", "--help"], ["bayes", "--help"],
                                  ["activations"]])
def test_help_and_activations_answer_without_importing_torch_or_pandas(argv):
    result = subprocess.run([sys.executable, "-c", IMPORTS_AFTER, *argv], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_the_import_probe_sees_torch_when_a_command_needs_it(tmp_path):
    """The probe above can fail: a command that trains imports torch, and the probe says so."""
    result = subprocess.run([sys.executable, "-c", IMPORTS_AFTER, "train", "quick", "--device",
                             "toaster"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "'torch'" in result.stdout, (result.stdout, result.stderr)


def test_python_dash_m_devtms_is_the_devtms_command():
    """`python -m devtms` runs the same CLI, exit statuses included (2 for bad input)."""
    ok = subprocess.run([sys.executable, "-m", "devtms", "--help"], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and "devtms" in ok.stdout and "study" in ok.stdout, ok
    bad = subprocess.run([sys.executable, "-m", "devtms", "train", "no-such-preset"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown preset 'no-such-preset'" in bad.stderr, bad


def test_a_reader_that_closes_the_pipe_early_ends_devtms_quietly():
    """`devtms activations | head`: the pipe's reader is gone before devtms writes a byte (its
    end is closed at once), so every write meets EPIPE; devtms exits 1 without a traceback
    (Python's recipe in the signal module's "Note on SIGPIPE"). (--help is argparse's, which
    already ignores a closed pipe.)"""
    proc = subprocess.Popen([sys.executable, "-m", "devtms.cli", "activations"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == 1, (proc.returncode, err)


def test_the_llc_commands_engine_choices_are_the_engines_devtms_has():
    """commands/llc.py names the engines itself (so --help imports no torch): the same ones."""
    from devtms.commands.llc import ENGINE_NAMES
    from devtms.llc import ENGINES

    assert set(ENGINE_NAMES) == set(ENGINES) and ENGINE_NAMES[0] == next(iter(ENGINES))
