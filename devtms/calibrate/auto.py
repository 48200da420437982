"""`devtms calibrate RUN --auto`: choose eps, gamma, burn-in and draws from explicit criteria.

At the run's last checkpoint (training must have finished), on a sample of instances (up to
MAX_SAMPLE, spread evenly over the conditions, instances whose training diverged left out),
candidate settings are tried in order of cost (CANDIDATES: cheapest first; at equal cost the
larger eps, which mixes faster). Chains, minibatch, seed and n_beta are the run's active
setting's. A candidate passes when, over the sample's estimates that are at a local minimum:

    health        at least 90% of the estimates are healthy (devtms.llc.health): split R-hat
                  <= 1.05 and bulk ESS >= 100 of the loss trace, no drift between the halves of
                  the draws, MALA acceptance >= 0.3, no diverged chain, no llc above d/2
    stability     doubling burn-in and draws moves the mean llc by less than 5%
    localization  gamma x 3 and gamma / 3 each move the mean llc by less than 25% (the
                  localization bias is real on these models: on chen2023, tripling gamma from
                  3 to 10 lowers the LLC by about 20%; a setting on a steep part of that curve,
                  or one whose chains wander off when gamma is smaller, fails)

Checks run cheapest first and a candidate stops at its first failure. Estimates whose
checkpoint is not at a local minimum (state not_at_minimum) are left out of every criterion
and counted: no setting measures a basin that is not there; a candidate for which more than
half the sample is in that state fails (such a verdict says more about eps than about w*).
The first candidate that passes is the choice: `run_auto` writes the evidence to
calibration/auto.csv and makes it the run's active LLC setting. When none passes nothing is
written: the caller reports the closest candidate (most checks passed, then fewest unhealthy).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pandas as pd

from devtms import llc
from devtms.errors import UserError
from devtms.store import CALIBRATION_DIR, RunDir, write_csv_atomic

AUTO_CSV = "auto.csv"  # in calibration/: the evidence, one row per setting measured
AUTO_ESTIMATES_CSV = "auto_estimates.csv"  # ... and every estimate behind it
MAX_SAMPLE = 48  # instances checked; spread over the conditions
# (eps, gamma, burnin, draws), cheapest first
CANDIDATES = (
    (3e-3, 5.0, 500, 1000),
    (3e-3, 20.0, 500, 1000),  # a checkpoint that is a shallow minimum needs more localization
    (5e-4, 30.0, 500, 1000),  # ... and a stiff one (one-hot data, 8 features) a smaller eps too
    (3e-3, 5.0, 1000, 2000),
    (1e-3, 5.0, 1000, 2000),
    (1e-3, 20.0, 1000, 2000),
    (3e-4, 5.0, 2000, 4000),
    (3e-4, 20.0, 2000, 4000),
)
CHECKS = ("health", "stability", "localization")
GRID_EPS = (3e-3, 1e-3, 3e-4)  # with --gamma-grid alone
GRID_GAMMA = (5.0,)  # with --eps-grid alone


@dataclass(frozen=True)
class Criteria:
    """The thresholds of the module docstring."""

    healthy_min: float = 0.90  # share of the sample's estimates at a local minimum
    doubling_tol: float = 0.05
    gamma_factor: float = 3.0
    gamma_tol: float = 0.25
    max_not_at_minimum: float = 0.5  # share of the sample


@dataclass
class AutoJob:
    step: int
    instances: list[int]
    candidates: list[llc.LLCParams]
    compiled: bool
    device: str
    criteria: Criteria = field(default_factory=Criteria)


@dataclass
class AutoResult:
    chosen: llc.Setting | None
    evidence: pd.DataFrame  # one row per setting measured (see `_variant_row`)
    closest: int  # the index of the best candidate when none passed, else the chosen one
    failing: list[str] = field(default_factory=list)  # activations unhealthy at `closest`
    estimates: pd.DataFrame = field(default_factory=pd.DataFrame)  # llc.csv rows + candidate


def build_auto_job(run: RunDir, *, instances: str | None = None, eps_grid: list[float] | None
                   = None, gamma_grid: list[float] | None = None, device: str = "cpu",
                   compile_setting: str = "auto") -> AutoJob:
    """Validate `--auto` against the run; raises UserError. Writes nothing."""
    if not run.stage_done("train"):
        raise UserError(f"{run.path}: training has not finished; --auto calibrates at the last "
                        "checkpoint of a finished run: resume the training first (`devtms train "
                        f"{run.path} --resume`)")
    request = llc.build_request(run, instances=instances, steps="last", engine="batched",
                                device=device)
    diverged = {int(i) for i in run.stage("train").get("diverged", [])}
    pool = [i for i in request.instances if i not in diverged]
    if not pool:
        raise UserError(f"{run.path}: every chosen instance diverged in training: nothing to "
                        "calibrate on")
    chosen = pool if instances is not None else sample_instances(run.instances, pool)
    base = request.params
    values = CANDIDATES
    if eps_grid is not None or gamma_grid is not None:  # the user's values, at every length
        lengths = sorted({(b, d) for *_, b, d in CANDIDATES}, key=sum)
        values = [(e, g, b, d) for b, d in lengths
                  for e in sorted(eps_grid or GRID_EPS, reverse=True)
                  for g in gamma_grid or GRID_GAMMA]
    candidates = [dataclasses.replace(base, eps=e, gamma=g, burnin=b, draws=d)
                  for e, g, b, d in values]
    compiled = llc.use_compile(run.config, base, "batched", compile_setting)
    return AutoJob(request.steps[0], chosen, candidates, compiled, request.device)


def sample_instances(instances: pd.DataFrame, pool: list[int], limit: int = MAX_SAMPLE
                     ) -> list[int]:
    """Up to `limit` instances of `pool`, the same number from every condition (activation x
    sparsity x importance), at least one each, seeds in order."""
    table = instances[instances["instance"].isin(pool)]
    keys = [c for c in ("activation", "sparsity", "importance_ratio") if c in table]
    groups = [g for _, g in table.groupby(keys, sort=False)]
    per = max(1, math.ceil(limit / len(groups)))
    return sorted(int(i) for g in groups for i in g.sort_values("seed")["instance"][:per])


def auto_calibrate(inputs: llc.RunInputs, job: AutoJob, say=lambda line: None) -> AutoResult:
    """Try the candidates in order; pure (writes nothing). `say` gets one line per candidate."""
    rows: list[dict] = []
    estimates: list[pd.DataFrame] = []
    scores = []
    for k, params in enumerate(job.candidates):
        checks_passed, unhealthy = _try(inputs, job, k, params, rows, estimates)
        scores.append((checks_passed, -unhealthy))
        say(_line(rows, k))
        if checks_passed == len(CHECKS):
            return AutoResult(llc.Setting(params, "batched", "devtms calibrate --auto"),
                              pd.DataFrame(rows), k, estimates=pd.concat(estimates))
    closest = max(range(len(scores)), key=lambda k: scores[k])
    base = next(r for r in rows if r["candidate"] == closest)
    failing = [a for a in base["failing_activations"].split(", ") if a]
    return AutoResult(None, pd.DataFrame(rows), closest, failing, pd.concat(estimates))


def _try(inputs: llc.RunInputs, job: AutoJob, k: int, params: llc.LLCParams,
         rows: list[dict], estimates: list[pd.DataFrame]) -> tuple[int, int]:
    """Measure candidate k, cheapest check first; append the evidence rows and the estimates.
    -> (checks passed, unhealthy estimates)"""
    c = job.criteria

    def measure(variant: str, setting: llc.LLCParams) -> pd.DataFrame:
        table = _measure(inputs, job, setting)
        estimates.append(table.assign(candidate=k, variant=variant))
        return table

    base = measure("base", params)
    row = _variant_row(k, "base", params, base, None)
    usable = base["state"] != "not_at_minimum"
    share_absent = 1.0 - usable.mean()
    unhealthy = int((~base["healthy"] & usable).sum())
    row["failing_activations"] = ", ".join(
        sorted(set(base.loc[~base["healthy"] & usable, "activation"])))
    healthy = int((base["healthy"] & usable).sum())
    ok = (usable.any() and healthy >= c.healthy_min * usable.sum() - 1e-9
          and share_absent <= c.max_not_at_minimum)
    row.update(check="health", passed=ok)
    rows.append(row)
    if not ok:
        return 0, unhealthy
    reference = base[base["healthy"]]  # the checks compare the estimates that count
    doubled = dataclasses.replace(params, burnin=2 * params.burnin, draws=2 * params.draws)
    measured = measure("doubled burn-in and draws", doubled)
    row = _variant_row(k, "doubled burn-in and draws", doubled, measured, reference)
    ok = abs(row["change"]) < c.doubling_tol
    row.update(check="stability", passed=ok)
    rows.append(row)
    if not ok:
        return 1, unhealthy
    passed = True
    for factor, name in ((c.gamma_factor, "gamma x 3"), (1 / c.gamma_factor, "gamma / 3")):
        varied = dataclasses.replace(params, gamma=params.gamma * factor)
        row = _variant_row(k, name, varied, measure(name, varied), reference)
        ok = abs(row["change"]) < c.gamma_tol
        row.update(check="localization", passed=ok)
        rows.append(row)
        passed &= ok
    return (3 if passed else 2), unhealthy


def _measure(inputs: llc.RunInputs, job: AutoJob, params: llc.LLCParams) -> pd.DataFrame:
    """The estimates of the sample at the calibration step under `params`, with activation."""
    request = llc.LLCRequest(job.instances, [job.step], "batched", params, job.compiled,
                             job.device)
    result = llc.estimate_chunk(inputs.task(job.instances, [job.step], request))
    table = pd.DataFrame(result.rows)
    activation = inputs.table.set_index("instance")["activation"]
    table["activation"] = activation.loc[table["instance"]].to_numpy()
    return table


def _variant_row(k: int, variant: str, params: llc.LLCParams, table: pd.DataFrame,
                 reference: pd.DataFrame | None) -> dict:
    """One line of evidence: a setting measured on the sample. llc_mean is over its healthy
    estimates; change compares the estimates healthy at the base setting."""
    usable = table[table["state"] != "not_at_minimum"]
    healthy = table[table["healthy"]]
    mean = float(healthy["llc_mean"].mean()) if len(healthy) else math.nan
    change = math.nan
    if reference is not None:
        same = table.set_index("instance").loc[reference["instance"], "llc_mean"]
        old = float(reference["llc_mean"].mean())
        change = (float(same.mean()) - old) / abs(old) if old else math.inf
    return dict(candidate=k, variant=variant, eps=params.eps, gamma=params.gamma,
                burnin=params.burnin, draws=params.draws, chains=params.chains,
                n_beta=params.n_beta, estimates=len(table),
                healthy=int(table["healthy"].sum()),
                not_at_minimum=int((table["state"] == "not_at_minimum").sum()),
                llc_mean=mean, change=change,
                rhat_max=float(usable["rhat"].max()) if len(usable) else math.nan,
                ess_min=float(usable["ess_bulk"].min()) if len(usable) else math.nan,
                mala_min=float(usable["mala_acceptance"].min()) if len(usable) else math.nan,
                mala_median=float(usable["mala_acceptance"].median()) if len(usable) else math.nan,
                setting=params.tag("batched"))


def _line(rows: list[dict], k: int) -> str:
    """A candidate's evidence as one printed line."""
    mine = [r for r in rows if r["candidate"] == k]
    b = mine[0]
    head = (f"eps {b['eps']:<7g} gamma {b['gamma']:<4g} {b['burnin']:>5}+{b['draws']:<5} "
            f"llc {b['llc_mean']:7.3g}  healthy {b['healthy']}/{b['estimates']} "
            f"(not at a minimum {b['not_at_minimum']})  R-hat max {b['rhat_max']:.3f}  "
            f"ESS min {b['ess_min']:.0f}  MALA min {b['mala_min']:.2f}")
    changes = "  ".join(f"{r['variant']}: {100 * r['change']:+.1f}%" for r in mine[1:])
    verdict = "PASS" if all(r["passed"] for r in mine) and len(mine) == 4 else \
        f"fails {next(r['check'] for r in mine if not r['passed'])}"
    failing = f" (unhealthy: {b['failing_activations']})" if b.get("failing_activations") else ""
    return f"  [{k}] {head}  {changes}  -> {verdict}{failing}"


def run_auto(run: RunDir, job: AutoJob, say=print) -> AutoResult:
    """auto_calibrate, then (when a candidate passed) calibration/auto.csv and activation.
    The caller holds the run lock."""
    inputs = llc.RunInputs(run, job.instances, [job.step])
    result = auto_calibrate(inputs, job, say)
    if result.chosen is not None:
        write_csv_atomic(run.path / CALIBRATION_DIR / AUTO_ESTIMATES_CSV, result.estimates)
        write_csv_atomic(run.path / CALIBRATION_DIR / AUTO_CSV, result.evidence)
        llc.activate(run, result.chosen)
    return result
