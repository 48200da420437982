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

A change smaller than 2% of d/2 (`Criteria.flat_floor`) passes stability and localization
whatever its ratio: an LLC near 0 (a saturated activation's nearly flat basin) is 0 at the
resolution of the LLC's range [0, d/2], and the ratio of two numbers near 0 is noise.
Checks run cheapest first and a candidate stops at its first failure. Estimates whose
checkpoint is not at a local minimum (state not_at_minimum) are left out of every criterion
and counted: no setting measures a basin that is not there; a candidate for which more than
half the sample is in that state fails (such a verdict says more about eps than about w*).
The first candidate that passes is the choice: `run_auto` writes the evidence to
calibration/auto.csv and makes it the run's active LLC setting. When none passes nothing is
written: the caller reports the closest candidate (most checks passed, then fewest unhealthy).

**A setting per activation.** The criteria above allow a few unhealthy estimates, and one
activation's basin can be unlike the rest (a saturated activation's nearly flat loss needs a
larger eps than the stiff basins of the others tolerate). So the choice is measured on the
rest of the run too (the instances outside the sample), and each activation with an estimate
at a minimum that is unhealthy there or in the sample is calibrated again alone, on all its
instances: the other candidates in the same order, then GROUP_EXTRA, each judged on that
activation alone by the same three checks and a fourth,

    step size     halving eps moves the mean llc by less than 10% (a large eps biases the
                  LLC up, and its noise can hide that the chains descend below L(w*))

The first that passes becomes its own setting (`ActivationSettings.by_activation`); one where
none passes keeps the run's choice, and the output names it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pandas as pd

from devtms import llc
from devtms.errors import UserError
from devtms.llc.check import sample_instances
from devtms.store import CALIBRATION_DIR, RunDir, write_csv_atomic

AUTO_CSV = "auto.csv"  # in calibration/: the evidence, one row per setting measured
AUTO_ESTIMATES_CSV = "auto_estimates.csv"  # ... and every estimate behind it
ALL = "all"  # the evidence's `group` of the run-wide candidates (else: an activation's name)
REST = "rest"  # ... and of the chosen one on the instances outside the sample
SOURCE = "devtms calibrate --auto"  # the chosen setting's source in run.json
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
# tried for one activation after CANDIDATES: a larger eps for a nearly flat basin
GROUP_EXTRA = ((5e-3, 30.0, 500, 1000), (1e-2, 30.0, 500, 1000))
CHECKS = ("health", "stability", "localization")
GROUP_CHECKS = (*CHECKS, "step size")  # one activation's own setting: its eps may be large
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
    eps_tol: float = 0.10  # halving eps (an activation's own setting)
    flat_floor: float = 0.02  # a change below this share of d/2 passes any check: the LLC is
    # ~0 at the resolution of its range [0, d/2], and a ratio of numbers near 0 is noise


@dataclass
class AutoJob:
    step: int
    instances: list[int]
    candidates: list[llc.LLCParams]
    compiled: bool
    device: str
    criteria: Criteria = field(default_factory=Criteria)
    pool: list[int] = field(default_factory=list)  # every instance it may use (diverged left
    # out): the rest of the run is measured at the choice, and an activation calibrated alone
    # on all of its instances; empty: the sample is the pool


@dataclass
class AutoResult:
    chosen: llc.ActivationSettings | None
    evidence: pd.DataFrame  # one row per setting measured (see `_variant_row`)
    closest: int  # the index of the best candidate when none passed, else the chosen one
    failing: list[str] = field(default_factory=list)  # activations unhealthy at `closest`
    estimates: pd.DataFrame = field(default_factory=pd.DataFrame)  # llc.csv rows + candidate
    unresolved: list[str] = field(default_factory=list)  # unhealthy, and no own setting passed


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
    chosen = pool if instances is not None else sample_instances(run.instances, pool,
                                                                 MAX_SAMPLE)
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
    return AutoJob(request.steps[0], chosen, candidates, compiled, request.device, pool=pool)


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
            _measure_rest(inputs, job, k, params, rows, estimates, say)
            failing = _failing(rows, k)
            own, unresolved = _by_activation(inputs, job, k, failing, rows, estimates, say)
            chosen = llc.ActivationSettings(
                llc.Setting(params, "batched", SOURCE), {
                    a: llc.Setting(p, "batched", f"{SOURCE}, on {a} alone")
                    for a, p in own.items()})
            return AutoResult(chosen, pd.DataFrame(rows), k, failing,
                              pd.concat(estimates), unresolved)
    closest = max(range(len(scores)), key=lambda k: scores[k])
    return AutoResult(None, pd.DataFrame(rows), closest, _failing(rows, closest),
                      pd.concat(estimates))


def _failing(rows: list[dict], k: int) -> list[str]:
    """The activations with an unhealthy estimate at a minimum at candidate k, in the sample
    or the rest of the run."""
    found = {a for r in rows if r["candidate"] == k and r["group"] in (ALL, REST)
             and r["variant"] == "base" for a in r["failing_activations"].split(", ") if a}
    return sorted(found)


def _measure_rest(inputs: llc.RunInputs, job: AutoJob, k: int, params: llc.LLCParams,
                  rows: list[dict], estimates: list[pd.DataFrame], say) -> None:
    """The chosen candidate on the pool's instances outside the sample (measured, not judged:
    an activation unhealthy there is calibrated alone like one unhealthy in the sample)."""
    sample = set(job.instances)
    rest = [i for i in job.pool if i not in sample]
    if not rest:
        return
    table = _measure(inputs, dataclasses.replace(job, instances=rest), params)
    estimates.append(table.assign(candidate=k, variant="base", group=REST))
    usable = table["state"] != "not_at_minimum"
    rows.append({"group": REST, **_variant_row(k, "base", params, table, None),
                 "failing_activations": ", ".join(
                     sorted(set(table.loc[~table["healthy"] & usable, "activation"]))),
                 "check": "measured", "passed": True})
    say(_line(rows, k, REST))


def _by_activation(inputs: llc.RunInputs, job: AutoJob, chosen: int, failing: list[str],
                   rows: list[dict], estimates: list[pd.DataFrame], say
                   ) -> tuple[dict[str, llc.LLCParams], list[str]]:
    """Each of `failing` calibrated alone on all its instances (module docstring).
    -> (activation -> its setting's hyperparameters, the activations none passed for)"""
    activation = inputs.table.set_index("instance")["activation"]
    extra = [dataclasses.replace(job.candidates[chosen], eps=e, gamma=g, burnin=b, draws=d)
             for e, g, b, d in GROUP_EXTRA]
    tries = [(k, p) for k, p in enumerate(job.candidates) if k != chosen]
    tries += [(len(job.candidates) + j, p) for j, p in enumerate(extra)
              if p not in job.candidates]
    own: dict[str, llc.LLCParams] = {}
    for name in failing:
        mine = [i for i in job.pool or job.instances if activation.loc[i] == name]
        group_job = dataclasses.replace(job, instances=mine)
        for k, params in tries:
            checks_passed, _ = _try(inputs, group_job, k, params, rows, estimates, group=name)
            say(_line(rows, k, name))
            if checks_passed == len(GROUP_CHECKS):
                own[name] = params
                break
    return own, [a for a in failing if a not in own]


def _try(inputs: llc.RunInputs, job: AutoJob, k: int, params: llc.LLCParams,
         rows: list[dict], estimates: list[pd.DataFrame], group: str = ALL) -> tuple[int, int]:
    """Measure candidate k on job.instances, cheapest check first; append the evidence rows
    and the estimates, labelled with `group` (ALL, or the one activation calibrated alone).
    -> (checks passed, unhealthy estimates)"""
    c = job.criteria

    def measure(variant: str, setting: llc.LLCParams) -> pd.DataFrame:
        table = _measure(inputs, job, setting)
        estimates.append(table.assign(candidate=k, variant=variant, group=group))
        return table

    def variant_row(variant: str, setting: llc.LLCParams, table: pd.DataFrame,
                    reference: pd.DataFrame | None) -> dict:
        return {"group": group, **_variant_row(k, variant, setting, table, reference)}

    base = measure("base", params)
    row = variant_row("base", params, base, None)
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
    model = inputs.config.model
    floor = c.flat_floor * llc.num_parameters(model.n_hidden, model.n_features, model.bias) / 2
    checks = CHECKS if group == ALL else GROUP_CHECKS
    for passed_before, check in enumerate(checks[1:], start=1):
        passed = True
        for name, varied, tol in _variants(check, params, c):
            row = variant_row(name, varied, measure(name, varied), reference)
            ok = abs(row["change"]) < tol or abs(row["delta"]) < floor
            row.update(check=check, passed=ok)
            rows.append(row)
            passed &= ok
        if not passed:
            return passed_before, unhealthy
    return len(checks), unhealthy


def _variants(check: str, params: llc.LLCParams, c: Criteria
              ) -> list[tuple[str, llc.LLCParams, float]]:
    """The settings a check measures besides the candidate: (name, setting, tolerance)."""
    replace = dataclasses.replace
    if check == "stability":
        return [("doubled burn-in and draws",
                 replace(params, burnin=2 * params.burnin, draws=2 * params.draws),
                 c.doubling_tol)]
    if check == "localization":
        return [("gamma x 3", replace(params, gamma=params.gamma * c.gamma_factor), c.gamma_tol),
                ("gamma / 3", replace(params, gamma=params.gamma / c.gamma_factor), c.gamma_tol)]
    assert check == "step size", check
    return [("eps / 2", replace(params, eps=params.eps / 2), c.eps_tol)]


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
    change = delta = math.nan
    if reference is not None:
        same = table.set_index("instance").loc[reference["instance"], "llc_mean"]
        old = float(reference["llc_mean"].mean())
        delta = float(same.mean()) - old
        change = delta / abs(old) if old else math.inf
    return dict(candidate=k, variant=variant, eps=params.eps, gamma=params.gamma,
                burnin=params.burnin, draws=params.draws, chains=params.chains,
                n_beta=params.n_beta, estimates=len(table),
                healthy=int(table["healthy"].sum()),
                not_at_minimum=int((table["state"] == "not_at_minimum").sum()),
                llc_mean=mean, change=change, delta=delta,
                rhat_max=float(usable["rhat"].max()) if len(usable) else math.nan,
                ess_min=float(usable["ess_bulk"].min()) if len(usable) else math.nan,
                mala_min=float(usable["mala_acceptance"].min()) if len(usable) else math.nan,
                mala_median=float(usable["mala_acceptance"].median()) if len(usable) else math.nan,
                setting=params.tag("batched"))


def _line(rows: list[dict], k: int, group: str = ALL) -> str:
    """A candidate's evidence (on the whole sample, or one activation's) as one printed line."""
    mine = [r for r in rows if r["candidate"] == k and r["group"] == group]
    b = mine[0]
    head = (f"eps {b['eps']:<7g} gamma {b['gamma']:<4g} {b['burnin']:>5}+{b['draws']:<5} "
            f"llc {b['llc_mean']:7.3g}  healthy {b['healthy']}/{b['estimates']} "
            f"(not at a minimum {b['not_at_minimum']})  R-hat max {b['rhat_max']:.3f}  "
            f"ESS min {b['ess_min']:.0f}  MALA min {b['mala_min']:.2f}")
    changes = "  ".join(f"{r['variant']}: {100 * r['change']:+.1f}%" for r in mine[1:])
    verdict = next((f"fails {r['check']}" for r in mine if not r["passed"]), "PASS")
    failing = f" (unhealthy: {b['failing_activations']})" if b.get("failing_activations") else ""
    if group == REST:
        return f"  the rest of the run at [{k}]: {head}{failing}"
    where = "" if group == ALL else f"{group} alone: "
    return f"  {where}[{k}] {head}  {changes}  -> {verdict}{failing}"


def run_auto(run: RunDir, job: AutoJob, say=print) -> AutoResult:
    """auto_calibrate, then (when a candidate passed) calibration/auto.csv and activation.
    The caller holds the run lock."""
    inputs = llc.RunInputs(run, sorted({*job.instances, *job.pool}), [job.step])
    result = auto_calibrate(inputs, job, say)
    if result.chosen is not None:
        write_csv_atomic(run.path / CALIBRATION_DIR / AUTO_ESTIMATES_CSV, result.estimates)
        write_csv_atomic(run.path / CALIBRATION_DIR / AUTO_CSV, result.evidence)
        llc.activate(run, result.chosen)
    return result
