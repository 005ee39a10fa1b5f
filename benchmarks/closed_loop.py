"""Closed-loop benchmark of ``lrwatch.EarlyStepDrop``: does acting on the diagnoses speed training up?

    python benchmarks/closed_loop.py [--setups NAME ...] [--seeds N ...] [--options JSON] [--json FILE]

For every setup (``closed_loop_setups.SETUPS``: corpus task × optimizer) and evaluation seed, arms
run side by side with Lightning on the same initial weights and minibatch sequence:

* **too-high** condition (setups that have a too-high lr): the fixed StepLR with one 10× drop late,
  at ``LATE_DROP_FRACTION`` of the run (``fixed``); ReduceLROnPlateau on the training loss from the
  same lr (``plateau``, settings ``closed_loop_setups.PLATEAU``); the fixed StepLR with
  ``EarlyStepDrop()`` at its defaults (``early_drop``), or with the keyword arguments given by
  ``--options`` (e.g. ``'{"plateau_progress": null}'``, or ``'{"watch": {"thresholds": {"window": 50}}}'``).
* **tuned** condition (every setup): the StepLR at the tuned lr with its drop at
  ``TUNED_DROP_FRACTION`` (``fixed``) and the same with ``EarlyStepDrop()`` (``early_drop``).

How the two lrs were chosen, without looking at EarlyStepDrop: ``closed_loop_setups``.

Figures, per case and summarised: *final ratio* = an arm's full-data loss after the last update ÷ the
fixed arm's; *steps ratio* = the first evaluated step (every ``EVAL_EVERY`` updates) at which the arm's
full-data loss is at or below the fixed arm's final loss, ÷ ``N_STEPS`` ("—" where it never gets
there); EarlyStepDrop's actions (``callback.actions``) and the diagnoses it acted on.

Goals (from the issue): on the too-high condition EarlyStepDrop reaches the fixed final loss in
≤ ``STEPS_GOAL`` × the steps and ends below ReduceLROnPlateau, on ≥ ``SHARE_GOAL`` of (setup, seed)
cases; on the tuned condition it ends within ``TUNED_TOLERANCE`` of the fixed final loss.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from closed_loop_harness import ArmResult, quiet_lightning, run_arm
from closed_loop_setups import (EVAL_EVERY, EVAL_SEEDS, GAMMA, LATE_DROP_FRACTION, LEARNING_RATES, N_STEPS,
                                PLATEAU, SETUPS, TUNED_DROP_FRACTION, Setup, step_size)
from corpus_tasks import load_task

#: Goal: EarlyStepDrop reaches the fixed schedule's final loss within this fraction of its steps …
STEPS_GOAL = 0.6
#: … and ends below ReduceLROnPlateau, on at least this share of the too-high cases.
SHARE_GOAL = 0.8
#: Goal: on the tuned condition EarlyStepDrop's final loss is at most (1 + this) × the fixed one's.
TUNED_TOLERANCE = 0.02

CONDITIONS = {
    # condition: (arms, drop fraction of the StepLR arms)
    "too_high": (("step", "plateau", "early_drop"), LATE_DROP_FRACTION),
    "tuned": (("step", "early_drop"), TUNED_DROP_FRACTION),
}
ARM_LABELS = {"step": "fixed", "plateau": "plateau", "early_drop": "early_drop"}


def loss_ratio(loss: float, reference: float) -> float:
    """``loss`` ÷ ``reference`` (full-data losses, both >= 0). A float32 cross-entropy can underflow to exactly 0
    on separable data (wine with Adam does): then 1 when ``loss`` is 0 too, else inf."""
    if reference == 0:
        return 1.0 if loss == 0 else math.inf
    return loss / reference


@dataclass
class Case:
    """One (setup, condition, seed): every arm's result, keyed by harness arm name."""

    setup: Setup
    condition: str
    seed: int
    lr: float
    arms: dict[str, ArmResult]

    @property
    def target(self) -> float:
        """The fixed schedule's final full-data loss."""
        return self.arms["step"].final_loss

    def final_ratio(self, arm: str) -> float:
        return loss_ratio(self.arms[arm].final_loss, self.target)

    def steps_ratio(self, arm: str) -> float:
        """Steps to reach the target ÷ N_STEPS; inf when the arm never reaches it."""
        reached = self.arms[arm].steps_to_reach(self.target)
        return np.inf if reached is None else reached / N_STEPS

    def identical_before_first_action(self) -> bool:
        """Whether the EarlyStepDrop arm's losses equal the fixed arm's up to its first action: the
        check that the two arms really differ only where EarlyStepDrop acted."""
        fixed, early = self.arms["step"], self.arms["early_drop"]
        first = early.actions[0]["step"] if early.actions else N_STEPS + 1
        before = fixed.eval_steps < first
        return bool(np.array_equal(fixed.eval_losses[before], early.eval_losses[before]))


def run_case(setup: Setup, condition: str, seed: int, lr: float, options: dict | None = None) -> Case:
    """Every arm of one case; ``options``: EarlyStepDrop's keyword arguments (None: its defaults)."""
    arms, drop_fraction = CONDITIONS[condition]
    task = load_task(setup.task)
    results = {arm: run_arm(task, setup.optimizer, lr, seed, arm, N_STEPS, step_size(drop_fraction), GAMMA, PLATEAU,
                            EVAL_EVERY, options) for arm in arms}
    return Case(setup, condition, seed, lr, results)


# ---- formatting ------------------------------------------------------------------------------------
def _final(ratio: float) -> str:
    return f"{ratio:.3f}"


def _steps(ratio: float) -> str:
    return "—" if not np.isfinite(ratio) else f"{ratio:.2f}"


def _actions(result: ArmResult) -> str:
    return ", ".join(f"{a['kind']}@{a['step']}" for a in result.actions) or "none"


def _diagnoses(result: ArmResult) -> str:
    spans = [f"{d['kind']} {d['start']}–{'' if d['end'] is None else d['end']}" for d in result.diagnoses]
    return "; ".join(spans) or "none"


def _columns(condition: str, aggregate: bool) -> list[tuple[str, object]]:
    """(header, cell of a group of cases) for the figures of a condition's tables. Per case (a group
    of one) the aggregates are the value itself; over seeds, final ratios are geometric means and
    steps ratios medians."""
    arms = CONDITIONS[condition][0]
    mean, middle = (_geomean, statistics.median) if aggregate else ((lambda v: v[0]),) * 2
    suffix = (" (geo-mean)", " (median)") if aggregate else ("", "")
    columns = [(f"{ARM_LABELS[a]}/fixed final{suffix[0]}",
                lambda g, a=a: _final(mean([c.final_ratio(a) for c in g]))) for a in arms if a != "step"]
    if "plateau" in arms:
        columns.append((f"early_drop/plateau final{suffix[0]}",
                        lambda g: _final(mean([c.final_ratio("early_drop") / c.final_ratio("plateau") for c in g]))))
    columns += [(f"{ARM_LABELS[a]} steps{suffix[1]}", lambda g, a=a: _steps(middle([c.steps_ratio(a) for c in g])))
                for a in arms]
    return columns


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def case_table(cases: list[Case], condition: str) -> str:
    """One row per (setup, seed): figures, EarlyStepDrop's actions and the diagnoses behind them."""
    columns = _columns(condition, aggregate=False)
    head = ["setup", "seed", "lr", "fixed final", *(h for h, _ in columns),
            "early_drop actions", "diagnoses seen by early_drop", "same until 1st action"]
    rows = [_row(head), "|" + "---|" * len(head)]
    for c in cases:
        early = c.arms["early_drop"]
        rows.append(_row([c.setup.name, str(c.seed), f"{c.lr:g}", f"{c.target:.4g}", *(f([c]) for _, f in columns),
                          _actions(early), _diagnoses(early), "yes" if c.identical_before_first_action() else "NO"]))
    return "\n".join(rows)


def _geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def _effective_drops(case: Case) -> int:
    """EarlyStepDrop's drops that took effect within the run (one decided at the last step does not)."""
    return sum(a["kind"] == "drop" and a["step"] <= N_STEPS for a in case.arms["early_drop"].actions)


def summary_table(cases: list[Case], condition: str) -> str:
    """One row per setup (over its seeds) and one over all cases."""
    columns = _columns(condition, aggregate=True)
    head = ["setup", "cases", *(h for h, _ in columns), "early drops per run"]
    rows = [_row(head), "|" + "---|" * len(head)]
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.setup.name, []).append(c)
    groups["**all**"] = cases
    for name, group in groups.items():
        drops = statistics.mean(_effective_drops(c) for c in group)
        rows.append(_row([name, str(len(group)), *(f(group) for _, f in columns), f"{drops:.2f}"]))
    return "\n".join(rows)


def goal_lines(cases: list[Case]) -> list[str]:
    high = [c for c in cases if c.condition == "too_high"]
    tuned = [c for c in cases if c.condition == "tuned"]
    lines = []
    if high:
        fast = [c.steps_ratio("early_drop") <= STEPS_GOAL for c in high]
        below = [c.arms["early_drop"].final_loss < c.arms["plateau"].final_loss for c in high]
        both = [f and b for f, b in zip(fast, below)]
        median_steps = statistics.median(c.steps_ratio("early_drop") for c in high)
        for text, hits in ((f"too-high: early_drop reaches the fixed final loss in ≤ {STEPS_GOAL}× the steps", fast),
                           ("too-high: early_drop ends below ReduceLROnPlateau", below),
                           ("too-high: both at once", both)):
            share = sum(hits) / len(hits)
            lines.append(f"- {text}: {sum(hits)}/{len(hits)} = {share:.0%} (goal ≥ {SHARE_GOAL:.0%}) "
                         f"**{'PASS' if share >= SHARE_GOAL else 'MISS'}**")
        lines.append(f"- too-high: median early_drop steps ratio {_steps(median_steps)} (goal ≤ {STEPS_GOAL})")
    if tuned:
        ratios = [c.final_ratio("early_drop") for c in tuned]
        ok = [r <= 1 + TUNED_TOLERANCE for r in ratios]
        lines.append(f"- tuned: early_drop final ≤ {1 + TUNED_TOLERANCE:.2f}× fixed: {sum(ok)}/{len(ok)} "
                     f"(goal: all; worst {max(ratios):.3f}) **{'PASS' if all(ok) else 'MISS'}**")
    return lines


def _arm_seconds(cases: list[Case]) -> str:
    seconds = {}
    for c in cases:
        for arm, result in c.arms.items():
            seconds.setdefault(arm, []).append(result.seconds)
    return ", ".join(f"{ARM_LABELS[a]} {statistics.mean(s):.2f} s" for a, s in seconds.items())


def to_json(cases: list[Case]) -> list[dict]:
    return [{
        "setup": c.setup.name, "condition": c.condition, "seed": c.seed, "lr": c.lr,
        "arms": {ARM_LABELS[a]: {"eval_steps": r.eval_steps.tolist(),
                                 "eval_losses": [v if np.isfinite(v) else None for v in r.eval_losses.tolist()],
                                 "lrs": r.lrs.tolist(), "seconds": r.seconds, "actions": r.actions,
                                 "diagnoses": r.diagnoses}
                 for a, r in c.arms.items()},
    } for c in cases]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", choices=[s.name for s in SETUPS], help="only these setups")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(EVAL_SEEDS), help="evaluation seeds")
    parser.add_argument("--options", type=json.loads, default=None, metavar="JSON",
                        help="EarlyStepDrop keyword arguments as a JSON object (default: its defaults)")
    parser.add_argument("--json", metavar="FILE", help="save every run's curves, lrs, actions and diagnoses")
    args = parser.parse_args(argv)
    if args.options is not None and not isinstance(args.options, dict):
        parser.error(f"--options must be a JSON object, got {args.options!r}")

    torch.set_num_threads(1)
    quiet_lightning()
    start = time.perf_counter()
    setups = [s for s in SETUPS if args.setups is None or s.name in args.setups]
    cases = []
    for setup in setups:
        tuned_lr, high_lr = LEARNING_RATES[setup.name]
        for condition, lr in (("too_high", high_lr), ("tuned", tuned_lr)):
            if lr is None:
                continue
            for seed in args.seeds:
                case_start = time.perf_counter()
                cases.append(run_case(setup, condition, seed, lr, args.options))
                print(f"  {setup.name:20s} {condition:8s} seed {seed}: {time.perf_counter() - case_start:5.1f} s",
                      flush=True)

    print(f"\nEarlyStepDrop options: {json.dumps(args.options) if args.options else 'defaults'}")
    print(f"{N_STEPS} updates per run; full-data loss every {EVAL_EVERY}; StepLR ×{GAMMA:g} at "
          f"{LATE_DROP_FRACTION:.0%} (too-high) / {TUNED_DROP_FRACTION:.0%} (tuned); ReduceLROnPlateau {PLATEAU}.")
    print("Ratios: final = arm's final full-data loss ÷ fixed's; steps = steps to reach fixed's final loss ÷ "
          f"{N_STEPS} (— never). Actions (kind@first step they affect) and diagnosis spans are in optimizer "
          f"steps; a drop@{N_STEPS + 1} was decided at the last step and is not counted as an early drop.")
    for condition in CONDITIONS:
        chosen = [c for c in cases if c.condition == condition]
        if chosen:
            print(f"\n### {condition}: per setup × seed\n\n{case_table(chosen, condition)}")
            print(f"\n### {condition}: summary\n\n{summary_table(chosen, condition)}")
    print("\n### goals\n")
    print("\n".join(goal_lines(cases)))
    print(f"\nmean wall time per run: {_arm_seconds(cases)}")
    print(f"total wall time: {time.perf_counter() - start:.0f} s ({len(cases)} cases, "
          f"{sum(len(c.arms) for c in cases)} runs, torch threads = {torch.get_num_threads()})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(cases), f)


if __name__ == "__main__":
    main()
