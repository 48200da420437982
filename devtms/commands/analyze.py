"""devtms analyze: superposition geometry and phase transitions of a trained run."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from devtms.commands import add_threads, on_interrupt
from devtms.errors import UserError

EPILOG = """\
what it writes into RUN_DIR (geometry.csv and transitions.csv carry each instance's columns of
instances.csv, activation ... seed ..., right after `instance`):
  geometry.csv     per (instance, checkpoint step): dims_per_feature = m / ||W||_F^2,
                   n_represented (norm >= 0.5 x the largest), n_superposed (represented with
                   feature dimensionality D_i <= 0.9), n_antipodal_pairs, and for m = 2 the
                   k-gon: k_gon (robust convex-hull vertices of the represented features),
                   k_gon_label (k, then per off-polygon feature its bias: + positive,
                   - negative, o zero; "5+", "3ooo"),
                   polygon, angle_dev, norm_spread; for m = 1, n = 2 the phase class
  transitions.csv  per event: loss_drop (steep falls of log loss vs log step), llc_rise /
                   llc_fall (judged against llc.csv's error bars), kgon_change,
                   antipodal_change, superposition_change, dims_plateau; each loss drop
                   with its nearest LLC jump and geometry change and their lag in decades
  summary.csv      per condition (activation x sparsity x ..., aggregated over seeds): final
                   loss, LLC, dims per feature, most common final geometry, transition
                   counts, and the study questions "superposition emerges only after the
                   largest loss drop" and "loss drops coincide with LLC rises" as fractions

Run it again at any time: only new checkpoints are analysed, and files change only when their
content does (an llc.csv written by `devtms llc` since the last run updates transitions.csv
and summary.csv). Methods, thresholds and defaults: docs/science.md sections 3 and 7, and the
docstrings of devtms/geometry.py, devtms/transitions.py and devtms/smoothing.py.

examples:
  devtms train chen2023 --out runs/chen2023 && devtms analyze runs/chen2023
  devtms llc runs/chen2023 && devtms analyze runs/chen2023     # align with LLC jumps
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="geometry (k-gons, antipodal pairs) and phase transitions of a run",
        description="Measure the superposition geometry of every checkpoint of a trained run, "
                    "detect loss drops, LLC jumps and geometry changes along training, line "
                    "them up, and summarise per activation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory from "
                   "`devtms train`")
    p.add_argument("--show", type=int, default=24, metavar="N",
                   help="print the k-gon sequence of each instance when the run has at most N "
                        "instances, else the N most common sequences (default 24)")
    add_setting(p)
    add_threads(p)
    p.set_defaults(func=run)


def add_setting(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setting", metavar="ID",
                   help="the LLC setting of llc.csv to read (its id in the `setting` column; a "
                        "unique prefix will do). Default: the run's active setting, the config's "
                        "[llc] section until `devtms calibrate --auto` or `devtms llc --activate`")


def run(args: argparse.Namespace) -> int:
    from devtms.analyze import analyze_run
    from devtms.store import RunDir
    from devtms.threads import check_threads, threads_for, torch_threads

    threads = threads_for(0, check_threads(args.threads))  # geometry of tiny weight matrices
    if args.show < 0:
        raise UserError(f"--show {args.show}: must be >= 0")
    run_dir = RunDir.open(args.run_dir)
    if not run_dir.stage_done("train"):
        raise UserError(f"{args.run_dir}: training is not complete; finish it with `devtms train "
                        f"CONFIG --out {args.run_dir} --resume` before analysing")
    advice = f"the tables written are kept; finish with `{args.given}`"
    with on_interrupt(lambda: advice), run_dir.lock("devtms analyze"), torch_threads(threads):
        result = analyze_run(run_dir, llc_setting=args.setting)
    print_report(run_dir, result, args.show)
    return 0


def print_report(run_dir, result, show: int) -> None:
    instances = run_dir.instances
    swept = [c for c in ("sparsity", "importance_ratio") if instances[c].nunique() > 1]
    names = {int(r.instance): ", ".join([r.activation, *(f"{c} {getattr(r, c):g}" for c in swept),
                                         f"seed {r.seed}"])
             for r in instances.itertuples(index=False)}
    if result.sequences:
        print("k-gon sequences along training (label (first step)):")
        text = {i: " -> ".join(f"{label} ({step})" for step, label in seq)
                for i, seq in result.sequences.items()}
        if len(text) <= show:
            for i, line in text.items():
                print(f"  instance {i} ({names[i]}): {line}")
        else:
            shapes = Counter(" -> ".join(lab for _, lab in seq) for seq in result.sequences.values())
            print(f"  {len(text)} instances; the {min(show, len(shapes))} most common sequences "
                  f"(all in geometry.csv):")
            for shape, count in shapes.most_common(show):
                print(f"  {count:5d} x  {shape}")
    ev = result.transitions
    drops = ev[ev["kind"] == "loss_drop"]
    print(f"\n{len(drops)} loss drops, {int(ev['kind'].isin(['llc_rise', 'llc_fall']).sum())} LLC "
          f"jumps, {int((ev['kind'] == 'kgon_change').sum())} k-gon changes, "
          f"{len(ev) - len(drops)} events in all"
          + ("" if result.have_llc else " (no llc.csv: run `devtms llc` to add LLC jumps)"))
    if result.have_llc:
        print(f"LLC: the healthy estimates of setting {result.llc_setting}")
    elif result.llc_note:
        print(f"note: {result.llc_note}")
    if len(drops):
        with_geo = drops["coincides_geometry"].astype(bool)
        line = f"loss drops with a geometry change within tolerance: {with_geo.sum()}/{len(drops)}"
        if result.have_llc:
            across = drops["llc_rises_across"]
            line += (f"; with an LLC rise: {drops['coincides_llc_rise'].astype(bool).sum()}"
                     f"/{len(drops)} as a jump, {int((across == True).sum())}"  # noqa: E712
                     f"/{int(across.notna().sum())} measurable as a higher plateau level")
        print(line)
    print("\nper condition:" if swept else "\nper activation:")
    for row in result.summary.itertuples(index=False):
        name = ", ".join([row.activation, *(f"{c} {getattr(row, c):g}" for c in swept)])
        geo_text = (f", final {row.final_geometry} ({row.final_geometry_count}/{row.n_instances})"
                    if row.final_geometry else "")
        llc_text = "" if row.final_llc_mean != row.final_llc_mean else \
            f", llc {row.final_llc_mean:.3g}"
        print(f"  {name + ':':<14} loss {row.final_loss_mean:.3g}{llc_text}, dims/feature "
              f"{row.dims_per_feature_mean:.3g}{geo_text}, {row.loss_drops_mean:.2g} drops/instance")
    changed = ", ".join(result.written) if result.written else "nothing changed"
    print(f"\n{result.new_geometry_rows} new geometry rows; written: {changed} -> {run_dir.path}")
