"""Bad input to every command: exit status 2, one line on stderr naming the problem, nothing written.

One table, every row a real process running `python -m devtms.cli ...`, all in parallel
(forked from one interpreter that imported devtms once, tests/forkcli.py; DEVTMS_FRESH_CLI=1
starts a fresh interpreter per row instead). Every case gets its own workspace (the current
directory of the command), holding what its arguments name:
a trained run, a run whose training is unfinished, a directory that is not a run, a plain
file, config files. After the command, the workspace must be exactly as before: no new file
or directory anywhere (not even a default `runs/`), every existing file byte for byte the same
(the run's `.lock` included: validation comes before locking).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import TINY, run_cli, tiny_config
from .forkcli import run_many

CFG = "bad.toml"


def config_file(**overrides) -> dict[str, str]:
    """The case's config file: the tiny config's TOML with these overrides (see conftest)."""
    return {CFG: tiny_config(**overrides).toml}


@dataclass
class Case:
    id: str
    argv: list[str]  # {run} {partial} {notrun} {missing} {file} {ws}: paths in the workspace
    message: str  # a substring of the one stderr line
    files: dict[str, str | bytes] = field(default_factory=dict)  # extra files: name -> content


CASES = [
    # -- configs (train) --------------------------------------------------------------------
    Case("unknown activation", ["train", CFG],
         "nope", config_file(model={"activations": [*TINY["model"]["activations"], "nope"]})),
    Case("unknown preset", ["train", "no-such-preset"], "unknown preset 'no-such-preset'"),
    Case("config file missing", ["train", "missing.toml"], "config file not found"),
    Case("a directory that is not a run as the config", ["train", "{notrun}"],
         "is a directory, not a config"),
    Case("not TOML", ["train", CFG], "not valid TOML", {CFG: "name = \n[model\n"}),
    Case("wrong type: string for int", ["train", CFG], "model.n_features: expected an integer",
         config_file(model={"n_features": "five"})),
    Case("wrong type: bool for int", ["train", CFG], "train.steps: expected an integer",
         config_file(train={"steps": True})),
    Case("wrong type: section not a table", ["train", CFG], "model: expected a table",
         {CFG: 'model = 3\n'}),
    Case("unknown key in a section", ["train", CFG], "train.stepz: unknown key",
         config_file(train={"steps": None, "stepz": 300})),
    Case("unknown section", ["train", CFG], "unknown key 'modle'",
         config_file(model=None, modle=TINY["model"])),
    Case("sparsity out of range", ["train", CFG], "data.sparsity = 1.5",
         config_file(data={"kind": None, "sparsity": [0.5, 1.5]})),
    Case("m >= n", ["train", CFG], "model.n_hidden = 5", config_file(model={"n_hidden": 5})),
    Case("empty sweep of seeds", ["train", CFG], "train.seeds = []",
         config_file(train={"seeds": []})),
    Case("empty sweep of activations", ["train", CFG], "model.activations = []",
         config_file(model={"activations": []})),
    Case("negative eps in config", ["train", CFG], "llc.eps = -0.001",
         config_file(llc={"eps": -0.001})),
    Case("chains = 0 in config", ["train", CFG], "llc.chains = 0",
         config_file(llc={"chains": 0})),
    Case("lr = 0", ["train", CFG], "train.lr = 0.0", config_file(train={"lr": 0.0})),
    Case("unknown optimizer", ["train", CFG], "train.optimizer = 'rmsprop'",
         config_file(train={"optimizer": "rmsprop"})),
    Case("duplicate seeds", ["train", CFG], "train.seeds = [0, 0]",
         config_file(train={"seeds": [0, 0]})),
    Case("momentum with adam", ["train", CFG], "train.momentum = 0.9",
         config_file(train={"optimizer": "adam"})),
    Case("kgon init needs m = 2", ["train", CFG], "train.init = 'kgon'",
         config_file(model={"n_hidden": 3}, train={"seeds": [0], "init": "kgon"})),
    Case("binary file as the config", ["train", "some.bin"], "TOML is UTF-8 text",
         {"some.bin": bytes(range(256)) * 4}),
    Case("empty config", ["train", CFG], "no [model] or [data] or [train] section; a config "
         "needs [model]", {CFG: ""}),
    Case("config without [train]", ["train", CFG], "no [train] section", config_file(train=None)),
    # -- names from a config stay inside the output root (runs/) ---------------------------
    Case("run name climbs out of runs/", ["train", CFG], "name = '../../evil' is not allowed",
         config_file(name="../../evil")),
    Case("run name is absolute", ["train", CFG], "name = '/tmp/evil' is not allowed",
         config_file(name="/tmp/evil")),
    Case("run name is ..", ["train", CFG], "name = '..' is not allowed", config_file(name="..")),
    Case("run name is empty", ["train", CFG], "name = '' is not allowed", config_file(name="")),
    Case("study run name climbs out", ["study", CFG], "name = '../evil' is not allowed",
         config_file(name="../evil")),
    # -- train: command line ------------------------------------------------------------------
    Case("train --resume --force", ["train", CFG, "--resume", "--force"], "contradict",
         config_file()),
    Case("train --out is a file", ["train", CFG, "--out", "{file}"], "is not a directory",
         config_file()),
    Case("train --out is a foreign directory", ["train", CFG, "--out", "{notrun}"],
         "not a devtms run; refusing", config_file()),
    Case("train onto an existing run", ["train", "{run}"], "pass --resume"),
    Case("train --resume with another config", ["train", CFG, "--out", "{run}", "--resume"],
         "different config", config_file(train={"lr": 0.05})),
    Case("train --threads 0", ["train", CFG, "--threads", "0"], "--threads 0: give a positive",
         config_file()),
    Case("llc --threads -1", ["llc", "{run}", "--threads", "-1"], "--threads -1: give a positive"),
    Case("study --threads 0", ["study", CFG, "--threads", "0"], "--threads 0: give a positive",
         config_file()),
    Case("train bad --device", ["train", CFG, "--device", "toaster"], "--device 'toaster'",
         config_file()),
    Case("train --device cuda without CUDA", ["train", CFG, "--device", "cuda"],
         "CUDA is not available", config_file()),
    Case("train unknown flag", ["train", CFG, "--epochs", "3"], "unrecognized arguments",
         config_file()),
    Case("train --out unwritable", ["train", CFG, "--out", "/sys/devtms-x"],
         "--out /sys/devtms-x: cannot write in /sys", config_file()),
    # -- extending a run (more train.steps) -----------------------------------------------------
    Case("extend without --resume", ["train", CFG, "--out", "{run}"],
         "trained to 300 steps; pass --resume to extend it to 399",
         config_file(train={"steps": 399})),
    Case("extend and change the lr", ["train", CFG, "--out", "{run}", "--resume"],
         "different config (train.lr: 0.1 -> 0.05)", config_file(train={"steps": 399, "lr": 0.05})),
    Case("shorten a run", ["train", CFG, "--out", "{run}", "--resume"],
         "train.steps = 200 would shorten it", config_file(train={"steps": 200})),
    Case("extend where the default log interval changes",
         ["train", CFG, "--out", "{run}", "--resume"], "set train.log_every = 1",
         config_file(train={"steps": 600})),
    # -- llc ------------------------------------------------------------------------------------
    Case("llc on a directory that is not a run", ["llc", "{notrun}"], "not a devtms run"),
    Case("llc on a missing directory", ["llc", "{missing}"], "is not a directory"),
    Case("llc on a plain file", ["llc", "{file}"], "is not a directory"),
    Case("llc before training finished", ["llc", "{partial}"], "training is not complete"),
    Case("llc unknown --instances", ["llc", "{run}", "--instances", "99"], "unknown instance 99"),
    Case("llc --instances not a list", ["llc", "{run}", "--instances", "a-b"],
         "--instances: 'a-b' is not"),
    Case("llc --instances backwards range", ["llc", "{run}", "--instances", "5-2"],
         "not a valid range"),
    Case("llc step without a checkpoint", ["llc", "{run}", "--steps", "7"],
         "no checkpoint at step 7"),
    Case("llc step range without checkpoints", ["llc", "{run}", "--steps", "5000-6000"],
         "no checkpoint in that range"),
    Case("llc empty --steps", ["llc", "{run}", "--steps", ","], "--steps: empty list"),
    Case("llc negative eps", ["llc", "{run}", "--eps", "-1"], "llc.eps = -1.0"),
    Case("llc eps nan", ["llc", "{run}", "--eps", "nan"], "llc.eps"),
    Case("llc chains = 0", ["llc", "{run}", "--chains", "0"], "llc.chains = 0"),
    Case("llc draws = 0", ["llc", "{run}", "--draws", "0"], "llc.draws = 0"),
    Case("llc negative gamma", ["llc", "{run}", "--gamma", "-3"], "llc.gamma = -3.0"),
    Case("llc batch larger than the data", ["llc", "{run}", "--batch-size", "5000"],
         "--batch-size 5000 is larger"),
    Case("llc --chunk-size 0", ["llc", "{run}", "--chunk-size", "0"], "--chunk-size 0"),
    Case("llc --draws not an integer", ["llc", "{run}", "--draws", "ten"],
         "argument --draws: invalid int value"),
    Case("llc unknown engine", ["llc", "{run}", "--engine", "magic"], "argument --engine"),
    Case("llc devinterp preconditioned", ["llc", "{run}", "--engine", "devinterp", "--precond",
                                          "rmsprop"],
         "--engine devinterp cannot run a preconditioned"),
    Case("llc unknown --precond", ["llc", "{run}", "--precond", "adam"], "argument --precond"),
    Case("llc mala on minibatches", ["llc", "{run}", "--engine", "mala", "--batch-size", "10"],
         "--engine mala reads the whole LLC dataset"),
    Case("llc bad --device", ["llc", "{run}", "--device", "toaster"], "--device 'toaster'"),
    Case("llc --device cuda without CUDA", ["llc", "{run}", "--device", "cuda"],
         "CUDA is not available"),
    Case("llc --device meta", ["llc", "{run}", "--device", "meta"], "only cpu and cuda"),
    Case("llc unknown --scheduler", ["llc", "{run}", "--scheduler", "carrier-pigeon"],
         "--scheduler 'carrier-pigeon'"),
    # -- calibrate --------------------------------------------------------------------------
    Case("calibrate negative eps in grid", ["calibrate", "{run}", "--step", "last",
                                            "--eps-grid", "1e-3,-1"], "--eps-grid: '-1'"),
    Case("calibrate non-number in grid", ["calibrate", "{run}", "--step", "last",
                                          "--gamma-grid", "10,lots"], "--gamma-grid: 'lots'"),
    Case("calibrate empty grid", ["calibrate", "{run}", "--step", "last", "--eps-grid", ","],
         "--eps-grid: empty list"),
    Case("calibrate zero n_beta", ["calibrate", "{run}", "--step", "last",
                                   "--n-beta-grid", "0"], "--n-beta-grid: '0'"),
    Case("calibrate step without a checkpoint", ["calibrate", "{run}", "--step", "7"],
         "no checkpoint at step 7"),
    Case("calibrate a range of steps", ["calibrate", "{run}", "--step", "0-300"],
         "give one checkpoint step"),
    Case("calibrate without --step", ["calibrate", "{run}"], "--step is required without --auto"),
    Case("calibrate on a non-run", ["calibrate", "{notrun}", "--step", "last"], "not a devtms run"),
    # -- analyze --------------------------------------------------------------------------------
    Case("analyze a non-run", ["analyze", "{notrun}"], "not a devtms run"),
    Case("analyze before training finished", ["analyze", "{partial}"],
         "training is not complete"),
    Case("analyze --show -1", ["analyze", "{run}", "--show", "-1"], "--show -1"),
    # -- report ---------------------------------------------------------------------------------
    Case("report with no runs", ["report"], "the following arguments are required: RUN_DIR"),
    Case("report a non-run directory", ["report", "{notrun}"], "not a devtms run"),
    Case("report a missing directory", ["report", "{missing}"], "is not a directory"),
    Case("report --out not html", ["report", "{run}", "--out", "{ws}/r.pdf"], "ending in .html"),
    Case("report --out under a file", ["report", "{run}", "--out", "{file}/r.html"],
         "is not a directory"),
    Case("report two runs without --out", ["report", "{run}", "{partial}"], "pass --out"),
    Case("report --out unwritable", ["report", "{run}", "--out", "/sys/devtms-x.html"],
         "--out /sys/devtms-x.html: cannot write in /sys"),
    Case("report the same run twice", ["report", "{run}", "{run}", "--out", "{ws}/c.html"],
         "given twice"),
    # -- study ----------------------------------------------------------------------------------
    Case("study bad preset", ["study", "no-such-preset"], "unknown preset 'no-such-preset'"),
    Case("study --setting on a new run", ["study", CFG, "--setting", "zzz"],
         "--setting 'zzz' names no setting of", config_file()),
    Case("study bad config", ["study", CFG], "model.n_hidden = 5",
         config_file(model={"n_hidden": 5})),
    Case("study bad --device", ["study", CFG, "--device", "toaster"], "--device 'toaster'",
         config_file()),
    Case("study --device cuda without CUDA", ["study", CFG, "--device", "cuda"],
         "CUDA is not available", config_file()),
    Case("study --out unwritable", ["study", CFG, "--out", "/sys/devtms-x"],
         "cannot write in /sys", config_file()),
    Case("study into a foreign directory", ["study", CFG, "--out", "{notrun}"],
         "not a devtms run; refusing", config_file()),
    Case("study onto a run with another config", ["study", CFG, "--out", "{run}"],
         "different config", config_file(train={"lr": 0.05})),
    # -- the command itself -------------------------------------------------------------------
    Case("no command", [], "the following arguments are required: COMMAND"),
    Case("unknown command", ["trian", CFG], "invalid choice: 'trian'", config_file()),
]


def make_workspace(case: Case, ws: Path, trained: Path) -> dict[str, str]:
    ws.mkdir(parents=True)
    names = {"ws": str(ws), "missing": str(ws / "missing"), "run": str(ws / "run"),
             "partial": str(ws / "partial"), "notrun": str(ws / "notrun"),
             "file": str(ws / "file.txt")}
    text = " ".join(case.argv)
    if "{run}" in text:
        shutil.copytree(trained, ws / "run")
    if "{partial}" in text:  # a run whose training was interrupted
        shutil.copytree(trained, ws / "partial")
        meta = json.loads((ws / "partial" / "run.json").read_text())
        meta["stages"]["train"]["done"] = False
        (ws / "partial" / "run.json").write_text(json.dumps(meta))
    if "{notrun}" in text:
        (ws / "notrun").mkdir()
        (ws / "notrun" / "notes.txt").write_text("not a run\n")
    (ws / "file.txt").write_text("a plain file\n")
    for name, body in case.files.items():
        if isinstance(body, bytes):
            (ws / name).write_bytes(body)
        else:
            (ws / name).write_text(body)
    return names


def tree(path: Path) -> dict[str, str]:
    """Every file and directory under path (hidden ones too) with a hash of its bytes."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_table(cases: list[Case], trained: Path, root: Path, fresh: bool = False) -> dict:
    """Run every case in its own workspace, all at once. -> {id: (result, before, after)}"""
    lines, befores = [], []
    for k, case in enumerate(cases):
        ws = root / f"case{k:02d}"
        names = make_workspace(case, ws, trained)
        befores.append(tree(ws))
        lines.append(([a.format(**names) for a in case.argv], ws))
    if fresh:
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            results = list(pool.map(lambda line: run_cli(*line[0], cwd=line[1]), lines))
    else:
        results = run_many(lines)
    return {case.id: (result, before, tree(ws))
            for case, result, before, (_, ws) in zip(cases, results, befores, lines, strict=True)}


@pytest.fixture(scope="module")
def outcomes(tiny_run, tmp_path_factory):
    return run_table(CASES, tiny_run, tmp_path_factory.mktemp("cases"))


def test_the_table_is_comprehensive():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv[0] for c in CASES if c.argv}
    assert commands >= {"train", "llc", "calibrate", "analyze", "report", "study"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_it_and_writes_nothing(outcomes, case):
    result, before, after = outcomes[case.id]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert case.message in lines[0], lines[0]
    assert "Traceback" not in result.stderr and not result.stdout.strip(), result.stdout
    assert after == before, {k: (before.get(k), after.get(k))
                             for k in set(before) | set(after) if before.get(k) != after.get(k)}


def test_forked_rows_behave_as_fresh_interpreters(outcomes, tiny_run, tmp_path):
    """The fork server is only a faster start: a few rows in fresh `python -m devtms.cli`."""
    sample = [c for c in CASES if c.id in ("unknown preset", "llc step without a checkpoint",
                                            "report with no runs")]
    fresh = run_table(sample, tiny_run, tmp_path, fresh=True)
    for case in sample:
        forked, fresh_result = outcomes[case.id][0], fresh[case.id][0]
        assert fresh_result.returncode == forked.returncode == 2
        assert _no_workspace(fresh_result.stderr) == _no_workspace(forked.stderr)


def _no_workspace(text: str) -> str:
    return re.sub(r"/\S*/case\d+", "WS", text)


def test_names_from_files_never_place_a_file_outside_the_chosen_directory(tiny_run, tmp_path):
    """A config's name, or a run.json's, that would climb out of runs/ (or be absolute): the
    command refuses, and nothing appears anywhere under tmp_path, outside the workspace too."""
    ws = tmp_path / "a" / "b" / "ws"
    ws.mkdir(parents=True)
    names = ["../../evil", "../../../evil", str(tmp_path / "absolute-evil"), "..", "x/../../evil"]
    lines = []
    for k, name in enumerate(names):
        (ws / f"c{k}.toml").write_text(tiny_config(name=name).toml)
        lines += [(["train", f"c{k}.toml"], ws), (["study", f"c{k}.toml"], ws)]
    shutil.copytree(tiny_run, ws / "run")
    meta = json.loads((ws / "run" / "run.json").read_text())
    meta["config"]["name"] = "../../evil"
    (ws / "run" / "run.json").write_text(json.dumps(meta))
    lines += [(["train", "run", "--resume"], ws), (["study", "run"], ws)]
    before = tree(tmp_path)
    for (argv, _), result in zip(lines, run_many(lines), strict=True):
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (argv, result.stderr)
        assert "name = " in result.stderr and "not allowed" in result.stderr, result.stderr
    assert tree(tmp_path) == before
