"""Which checkpoints of an instance the report pictures, with what caption, and their weights.

An instance's snapshots: its initialisation, up to MAX_SNAPSHOTS - 2 transitions (by
EVENT_PRIORITY, then size) and its end, each captioned with what happened there. The
transitions are transitions.csv's (`devtms analyze`); without it, the steps where the
debounced k-gon label changes (devtms.analyze.kgon_sequences; m = 2), else four
log-spaced checkpoints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from devtms.analyze import kgon_sequences
from devtms.report.figures.geometry import Snapshot
from devtms.report.load import RunData

MAX_SNAPSHOTS = 7  # geometry snapshots per instance: init, up to 5 transitions, final
MAX_SNAPSHOT_SEEDS = 4  # rows of snapshots per condition (the first seeds); curves show all

# an event's name in a caption; None: its description is the caption ("k-gon 4 -> 5")
EVENT_NAMES = {"loss_drop": "loss drop", "llc_rise": "LLC rise", "llc_fall": "LLC fall",
               "kgon_change": None, "antipodal_change": None, "superposition_change": None,
               "dims_plateau": "D* step"}
EVENT_PRIORITY = ["kgon_change", "loss_drop", "antipodal_change", "superposition_change",
                  "dims_plateau", "llc_rise", "llc_fall"]


def instance_events(data: RunData, instance: int) -> pd.DataFrame:
    """transitions.csv's rows of one instance, by step (no rows without transitions.csv)."""
    if data.transitions is None or not len(data.transitions):
        return pd.DataFrame(columns=["kind", "step", "size", "description"])
    t = data.transitions
    return t[t["instance"] == instance].sort_values("step")


def snapshot_steps(data: RunData, instance: int, events: pd.DataFrame) -> list[tuple[int, str]]:
    """(step, caption) of the snapshots: init, the transitions (by priority), the end."""
    steps = data.steps
    captions: dict[int, list[str]] = {}
    if len(events):
        rank = {k: i for i, k in enumerate(EVENT_PRIORITY)}
        ev = events.assign(_r=events["kind"].map(rank).fillna(len(rank)),
                           _s=-events["size"].abs().fillna(0))
        for e in ev.sort_values(["_r", "_s"]).itertuples():
            step = _nearest_checkpoint(int(e.step), steps)
            captions.setdefault(step, [])
            cap = _caption(str(e.kind), str(e.description))
            if cap not in captions[step]:
                captions[step].append(cap)
    else:
        captions = _geometry_change_steps(data, instance)
    chosen = [s for s in captions if s not in (steps[0], steps[-1])][: MAX_SNAPSHOTS - 2]
    out = {steps[0]: ["init"] + captions.get(steps[0], []),
           steps[-1]: ["end"] + captions.get(steps[-1], [])}
    out.update({s: captions[s] for s in chosen})
    return [(s, "; ".join(out[s][:2])) for s in sorted(out)]  # the figure wraps them


def _caption(kind: str, description: str) -> str:
    name = EVENT_NAMES.get(kind, kind.replace("_", " "))
    if name is None:
        name = re.sub(r"\s*->\s*", "→", str(description))
    return name


def _nearest_checkpoint(step: int, steps: Sequence[int]) -> int:
    """The checkpoint nearest `step` on a log scale."""
    return min(steps, key=lambda s: (abs(math.log10(s + 1) - math.log10(step + 1)), s))


def _geometry_change_steps(data: RunData, instance: int) -> dict[int, list[str]]:
    """Without transitions.csv: the steps where the debounced k-gon label changes (m = 2)."""
    g = data.geometry[data.geometry["instance"] == instance]
    if data.m != 2 or not len(g):
        picks = np.unique(np.geomspace(1, max(data.max_step, 1), 4).round().astype(int))
        return {_nearest_checkpoint(int(s), data.steps): [] for s in picks}
    sequence = kgon_sequences(g)[instance]  # [(first step, label), ...]
    return {step: [f"k-gon {old}→{new}"]
            for (_, old), (step, new) in zip(sequence, sequence[1:], strict=False)}


def load_snapshots(data: RunData, wanted: dict[int, list[tuple[int, str]]]
                   ) -> dict[int, list[Snapshot]]:
    """{instance: [(step, caption)]} -> {instance: [Snapshot]} by step, one checkpoint read at a
    time."""
    position = {int(i): p for p, i in enumerate(data.run.instances["instance"])}
    by_step: dict[int, list[tuple[int, str]]] = {}
    for inst, items in wanted.items():
        for step, caption in items:
            by_step.setdefault(step, []).append((inst, caption))
    out: dict[int, list[Snapshot]] = {inst: [] for inst in wanted}
    bias = data.run.config.model.bias
    for step in sorted(by_step):
        t = data.run.load_checkpoint(step)
        W, b = t["W"].double().numpy(), t["b"].double().numpy()  # (I, m, n), (I, n)
        for inst, caption in by_step[step]:
            p = position[inst]
            out[inst].append(Snapshot(step, W[p].copy(), b[p].copy() if bias else None, caption))
    for snaps in out.values():
        snaps.sort(key=lambda s: s.step)
    return out
