"""Measure, once, the tuned and too-high lrs of the closed-loop benchmark's setups.

    python benchmarks/closed_loop_tune.py

Runs only the fixed StepLR arm, only on ``DEV_SEEDS``, and applies the criterion documented in
``closed_loop_setups``; prints the grid and the ``LEARNING_RATES`` constant to paste there.
EarlyStepDrop is never run here, so the choice cannot depend on it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from closed_loop_harness import run_arm, quiet_lightning
from closed_loop_setups import (DEV_SEEDS, EVAL_EVERY, GAMMA, HIGH_LR_MULTIPLE, LATE_DROP_FRACTION, LR_GRID, N_STEPS,
                                PLATEAU, SETUPS, TUNED_DROP_FRACTION, Setup, diverged, step_size)
from corpus_tasks import load_task


def fixed_runs(setup: Setup, lr: float, drop_fraction: float) -> list[np.ndarray]:
    """Full-data loss curves of the fixed StepLR arm on every development seed."""
    task = load_task(setup.task)
    return [run_arm(task, setup.optimizer, lr, seed, "step", N_STEPS, step_size(drop_fraction), GAMMA, PLATEAU,
                    EVAL_EVERY).eval_losses for seed in DEV_SEEDS]


def choose(setup: Setup) -> tuple[float, float | None]:
    """(tuned lr, too-high lr) of one setup, printing every grid point measured. The too-high lr is
    None when every grid lr above the tuned one diverges (the best lr is the largest stable one)."""
    grid = LR_GRID[setup.optimizer]
    finals = {}
    for lr in grid:
        curves = fixed_runs(setup, lr, TUNED_DROP_FRACTION)
        finals[lr] = np.inf if any(diverged(c) for c in curves) else float(np.mean([c[-1] for c in curves]))
        print(f"  {setup.name:20s} drop at {TUNED_DROP_FRACTION:.2f}  lr {lr:<7g} mean final loss {finals[lr]:.4g}",
              flush=True)
    tuned = min(grid, key=lambda lr: finals[lr])
    if tuned == grid[-1]:
        raise RuntimeError(f"{setup.name}: the best lr {tuned:g} is the top of LR_GRID; widen the grid")
    candidates = sorted((lr for lr in grid if tuned < lr <= HIGH_LR_MULTIPLE * tuned * (1 + 1e-9)), reverse=True)
    for lr in candidates:
        curves = fixed_runs(setup, lr, LATE_DROP_FRACTION)
        ok = not any(diverged(c) for c in curves)
        print(f"  {setup.name:20s} drop at {LATE_DROP_FRACTION:.2f}  lr {lr:<7g} "
              f"{'does not diverge' if ok else 'diverges'}; mean final loss {np.mean([c[-1] for c in curves]):.4g}",
              flush=True)
        if ok:
            return tuned, lr
    return tuned, None


def main() -> None:
    torch.set_num_threads(1)
    quiet_lightning()
    start = time.perf_counter()
    chosen = {setup.name: choose(setup) for setup in SETUPS}
    print("\nLEARNING_RATES = {")
    for name, (tuned, high) in chosen.items():
        print(f'    "{name}": ({tuned:g}, {"None" if high is None else f"{high:g}"}),')
    print("}")
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
