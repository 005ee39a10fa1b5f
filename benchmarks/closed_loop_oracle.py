"""What could an early drop gain on the closed-loop benchmark, and what would it cost on tuned runs?

    python benchmarks/closed_loop_oracle.py [--setups NAME ...] [--seeds N ...] [--drops T ...] [--two-drops]
                                            [--json FILE]

An oracle study, not a policy: every case of ``closed_loop.py`` (setup × condition × seed, the same
lrs, seeds and runs) is trained again with its one scheduled 10× drop moved to step t (the harness's
``"milestones"`` arm: updates after t use lr/10; no other drop within the run), for every t of
``--drops`` before the scheduled drop. It prints, per case and per t, the final full-data loss ÷ the
fixed schedule's, and whether the case would meet the issue's goals:

* too-high condition: reaches the fixed final loss in ≤ ``STEPS_GOAL`` × the steps **and** ends below
  ReduceLROnPlateau (run here too, as in ``closed_loop.py``);
* tuned condition: ends within ``TUNED_TOLERANCE`` of the fixed final loss.

The summary gives, for each t, the share of cases meeting the goals if *every* run dropped at t, and
the share an oracle reaches that knows the condition and picks the best t of each too-high case (and
never drops a tuned one); with ``--two-drops`` also the same oracle allowed two drops t1 < t2 (EarlyStepDrop
may take up to ``max_drops`` = 3). A causal policy sees one run and must tell the two conditions apart from
it: where no single t serves both conditions, the goals hinge on that distinction.

It also scores a family of causal policies with more information than any callback has: *plateau
rules on the exact full-data loss*. A rule decides at the steps t of ``--drops`` (every 50 steps at
the defaults, as EarlyStepDrop's ``decide_every``) from the fixed run's full-data losses evaluated up
to t, and drops at the first t where the loss's relative fall over the last K steps is below θ (two
statistics, every K of ``RULE_HORIZONS`` and θ of ``RULE_THRESHOLDS``); the outcome of that drop is
the moved-drop run at t, measured above (until its first drop a policy's run is the fixed run). The
thresholds are chosen here on the evaluation cases themselves, so the frontier printed (the most
too-high cases any rule serves while keeping a given number of tuned runs) is an upper bound for a
plateau rule on the minibatch loss, which sees the same trend through minibatch noise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import numpy as np
import torch

from closed_loop import STEPS_GOAL, TUNED_TOLERANCE, loss_ratio
from closed_loop_harness import ArmResult, quiet_lightning, run_arm
from closed_loop_setups import (EVAL_EVERY, EVAL_SEEDS, GAMMA, LATE_DROP_FRACTION, LEARNING_RATES, N_STEPS, PLATEAU,
                                SETUPS, TUNED_DROP_FRACTION, step_size)
from corpus_tasks import load_task

#: Candidate drop steps (each before the too-high condition's scheduled drop at 450; the tuned
#: condition uses those before its own drop at 300).
DEFAULT_DROPS = (50, 100, 150, 200, 250, 300, 350, 400)
DROP_FRACTION = {"too_high": LATE_DROP_FRACTION, "tuned": TUNED_DROP_FRACTION}
#: Plateau rules: horizons K (steps) and thresholds θ on the full-data loss's relative fall.
RULE_HORIZONS = (50, 100, 150, 200)
RULE_THRESHOLDS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
#: How a plateau rule measures the fall over the last K steps (evaluations at steps ≤ t only):
#: "mean": the mean over (t − K/2, t] against the mean over (t − K, t − K/2];
#: "best": the lowest over (t − K, t] against the lowest before it (ReduceLROnPlateau's test).
RULE_STATISTICS = ("mean", "best")


def _outcome(result: ArmResult, condition: str, target: float, plateau: float | None) -> dict:
    """One moved-drop run against the fixed arm's final loss ``target`` (and the plateau arm's final loss on
    the too-high condition): final ratio, steps ratio (None: never reached) and whether the goals are met."""
    reached = result.steps_to_reach(target)
    steps_ratio = None if reached is None else reached / N_STEPS
    if condition == "too_high":
        meets = steps_ratio is not None and steps_ratio <= STEPS_GOAL and result.final_loss < plateau
    else:
        meets = result.final_loss <= (1 + TUNED_TOLERANCE) * target
    return {"final_ratio": loss_ratio(result.final_loss, target), "steps_ratio": steps_ratio, "meets": bool(meets)}


def run_case(setup, condition: str, seed: int, lr: float, drops: tuple[int, ...], two_drops: bool = False) -> dict:
    """The fixed arm, the plateau arm (too-high only) and one single-drop arm per t before the
    scheduled drop (with ``two_drops``, on the too-high condition, also one arm per pair t1 < t2 of them);
    figures relative to the fixed arm."""
    task = load_task(setup.task)
    scheduled = step_size(DROP_FRACTION[condition])

    def arm(name: str, milestones: tuple[int, ...] = ()) -> ArmResult:
        return run_arm(task, setup.optimizer, lr, seed, name, N_STEPS, scheduled, GAMMA, PLATEAU, EVAL_EVERY,
                       milestones=milestones)

    fixed = arm("step")
    target = fixed.final_loss
    plateau = arm("plateau").final_loss if condition == "too_high" else None
    before = [t for t in drops if t < scheduled]
    moved = {t: _outcome(arm("milestones", (t,)), condition, target, plateau) for t in before}
    pairs = itertools.combinations(before, 2) if two_drops and condition == "too_high" else ()
    moved_twice = {f"{a},{b}": _outcome(arm("milestones", (a, b)), condition, target, plateau) for a, b in pairs}
    return {"setup": setup.name, "condition": condition, "seed": seed, "lr": lr, "fixed_final": target,
            "plateau_ratio": None if plateau is None else loss_ratio(plateau, target), "moved": moved,
            "moved_twice": moved_twice, "unmoved": _outcome(fixed, condition, target, plateau),
            "fixed_eval_steps": fixed.eval_steps.tolist(), "fixed_eval_losses": fixed.eval_losses.tolist()}


def recent_fall(steps: np.ndarray, losses: np.ndarray, t: int, horizon: int, statistic: str) -> float:
    """Relative fall of the full-data loss over the ``horizon`` steps up to step ``t`` (``RULE_STATISTICS``);
    ``steps``/``losses``: shape (n_evals,), only evaluations at steps ≤ t are read. NaN when the loss is
    not finite there."""
    if statistic == "mean":
        earlier = losses[(steps > t - horizon) & (steps <= t - horizon // 2)].mean()
        later = losses[(steps > t - horizon // 2) & (steps <= t)].mean()
    else:
        earlier = losses[steps <= t - horizon].min()
        later = losses[(steps > t - horizon) & (steps <= t)].min()
    with np.errstate(invalid="ignore"):
        return float((earlier - later) / earlier) if np.isfinite(earlier) and np.isfinite(later) else math.nan


def plateau_rule_meets(case: dict, statistic: str, horizon: int, threshold: float) -> bool:
    """Whether the case meets its goals under the plateau rule: the drop at the first step t of its moved
    drops with t ≥ ``horizon`` and a recent fall below ``threshold`` (NaN: no drop), else the fixed run's outcome."""
    steps, losses = np.asarray(case["fixed_eval_steps"]), np.asarray(case["fixed_eval_losses"])
    for t in sorted(case["moved"]):
        if t >= horizon and recent_fall(steps, losses, t, horizon, statistic) < threshold:
            return case["moved"][t]["meets"]
    return case["unmoved"]["meets"]


def plateau_rule_frontier(cases: list[dict]) -> list[tuple[int, int, str]]:
    """(too-high cases met, tuned cases met, rule) for the plateau rules no other rule beats on both
    conditions, most tuned runs kept first."""
    scores = {}
    for statistic, horizon, threshold in itertools.product(RULE_STATISTICS, RULE_HORIZONS, RULE_THRESHOLDS):
        met = {condition: sum(plateau_rule_meets(c, statistic, horizon, threshold)
                              for c in cases if c["condition"] == condition) for condition in ("too_high", "tuned")}
        key = (met["too_high"], met["tuned"])
        scores.setdefault(key, f"{statistic}, K={horizon}, θ={threshold:g}")
    front = [(h, u, rule) for (h, u), rule in scores.items()
             if not any(h2 >= h and u2 >= u and (h2, u2) != (h, u) for h2, u2 in scores)]
    return sorted(front, key=lambda x: (-x[1], -x[0]))


def case_table(cases: list[dict], condition: str, drops: tuple[int, ...]) -> str:
    """Per case: final ÷ fixed for the drop moved to each t (``*``: the case meets the goals)."""
    shown = [t for t in drops if t < step_size(DROP_FRACTION[condition])]
    head = ["setup", "seed", "lr", *(["plateau"] if condition == "too_high" else []), *(f"drop@{t}" for t in shown)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cases:
        cells = [c["setup"], str(c["seed"]), f"{c['lr']:g}"]
        if condition == "too_high":
            cells.append(f"{c['plateau_ratio']:.3f}")
        cells += [f"{c['moved'][t]['final_ratio']:.3f}{'*' if c['moved'][t]['meets'] else ''}" for t in shown]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def summary_lines(cases: list[dict], drops: tuple[int, ...]) -> list[str]:
    """Goal shares for 'every run drops at t', per t, and for the oracle."""
    lines = []
    high = [c for c in cases if c["condition"] == "too_high"]
    tuned = [c for c in cases if c["condition"] == "tuned"]
    for t in drops:
        parts = []
        for name, group, goal in (("too-high", high, f"≤ {STEPS_GOAL}× steps and below plateau"),
                                  ("tuned", tuned, f"within {TUNED_TOLERANCE:.0%}")):
            hit = [c["moved"][t]["meets"] for c in group if t in c["moved"]]
            if hit:
                parts.append(f"{name} {goal}: {sum(hit)}/{len(hit)}")
        if parts:
            lines.append(f"- every run drops at {t}: " + "; ".join(parts))
    if high:
        oracle = [any(m["meets"] for m in c["moved"].values()) for c in high]
        lines.append(f"- oracle (knows the condition; best t per too-high case, no early drop on tuned runs): "
                     f"too-high {sum(oracle)}/{len(oracle)}; tuned {len(tuned)}/{len(tuned)}")
        if any(c["moved_twice"] for c in high):
            both = [any(m["meets"] for m in (*c["moved"].values(), *c["moved_twice"].values())) for c in high]
            lines.append(f"- the same oracle with up to two drops (any t1 < t2 of the steps): too-high "
                         f"{sum(both)}/{len(both)}")
    if high and tuned:
        lines.append("- plateau rules on the exact full-data loss (thresholds chosen on these cases; the best a rule "
                     "reaches for each number of tuned runs it keeps):")
        lines += [f"  - too-high {h}/{len(high)}, tuned {u}/{len(tuned)}: {rule}" for h, u, rule in
                  plateau_rule_frontier(cases)]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", choices=[s.name for s in SETUPS], help="only these setups")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(EVAL_SEEDS), help="seeds (default: evaluation)")
    parser.add_argument("--drops", nargs="+", type=int, default=list(DEFAULT_DROPS), help="steps to move the drop to")
    parser.add_argument("--two-drops", action="store_true",
                        help="too-high cases: also every pair of drop steps (28 more runs a case at the defaults)")
    parser.add_argument("--json", metavar="FILE", help="save every case's figures")
    args = parser.parse_args(argv)
    drops = tuple(sorted(set(args.drops)))
    if not all(0 < t < N_STEPS for t in drops):
        parser.error(f"--drops must lie in 1..{N_STEPS - 1}, got {list(drops)}")

    torch.set_num_threads(1)
    quiet_lightning()
    start = time.perf_counter()
    cases = []
    for setup in (s for s in SETUPS if args.setups is None or s.name in args.setups):
        tuned_lr, high_lr = LEARNING_RATES[setup.name]
        for condition, lr in (("too_high", high_lr), ("tuned", tuned_lr)):
            if lr is None:
                continue
            for seed in args.seeds:
                cases.append(run_case(setup, condition, seed, lr, drops, args.two_drops))
                print(f"  {setup.name:20s} {condition:8s} seed {seed}", flush=True)

    print(f"\n{N_STEPS} updates per run; the one 10× drop moved to step t; cells: final full-data loss ÷ the fixed "
          f"schedule's (drop at {step_size(LATE_DROP_FRACTION)} too-high / {step_size(TUNED_DROP_FRACTION)} tuned); "
          f"* = the case meets its goals.")
    for condition in ("too_high", "tuned"):
        chosen = [c for c in cases if c["condition"] == condition]
        if chosen:
            print(f"\n### {condition}\n\n{case_table(chosen, condition, drops)}")
    print("\n### goals if the drop came at t\n")
    print("\n".join(summary_lines(cases, drops)))
    print(f"\ntotal wall time: {time.perf_counter() - start:.0f} s ({len(cases)} cases)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(cases, f)


if __name__ == "__main__":
    main()
