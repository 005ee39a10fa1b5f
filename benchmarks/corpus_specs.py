"""Which runs make up the diagnosis corpus, and how it splits into tuning and held-out parts.

Every task gets the same seven schedule/setting slots; the optimizer and seed rotate over the slots so
that each optimizer meets every schedule and setting somewhere. Learning rates are per task and
optimizer (``LEARNING_RATES``), chosen from sweeps of constant-lr runs on seed 0 by their final loss,
divergence and counterfactual label counts (sensible: the loss falls and dropping the lr does not help;
too high: dropping it helps at some checkpoints), so that the corpus holds positives and negatives of
every kind; never from a detector's output. The setting names a run's intent; its labels come from
the counterfactual branches alone. Diverging runs are listed one by one (``DIVERGING``) because plain
SGD on a cross-entropy linear model cannot diverge and the lr that makes the others diverge depends on
the task.
"""

from __future__ import annotations

from corpus_runs import RunSpec
from corpus_tasks import OPTIMIZERS, TASK_NAMES, load_task

#: (sensible lr, too-high lr) per task and optimizer.
LEARNING_RATES: dict[str, dict[str, tuple[float, float]]] = {
    "digits": {"sgd": (0.1, 1.0), "momentum": (0.01, 0.2), "adam": (3e-3, 0.1), "adamw": (3e-3, 0.1)},
    "breast_cancer": {"sgd": (0.1, 5.0), "momentum": (0.01, 0.5), "adam": (3e-3, 0.3), "adamw": (3e-3, 0.3)},
    "wine": {"sgd": (0.1, 2.5), "momentum": (0.01, 0.5), "adam": (3e-3, 0.3), "adamw": (3e-3, 0.3)},
    "clusters": {"sgd": (0.1, 2.0), "momentum": (0.01, 0.2), "adam": (3e-3, 0.1), "adamw": (3e-3, 0.1)},
    "linreg": {"sgd": (0.05, 0.25), "momentum": (0.01, 0.05), "adam": (3e-3, 0.1), "adamw": (3e-3, 0.1)},
    "moons": {"sgd": (0.1, 5.0), "momentum": (0.01, 0.5), "adam": (3e-3, 0.1), "adamw": (3e-3, 0.1)},
}

#: Step schedules per setting: (period as a fraction of the run, factor per drop). Sensible: 10x at
#: 40% and 80% of the run; aggressive: 4x every eighth of the run.
STEP_SCHEDULES = {
    "sensible": (0.4, 0.1),
    "too_high": (0.5, 0.1),
    "too_aggressive": (1 / 8, 0.25),
    "diverging": (0.4, 0.1),
}
#: Exponential schedules per setting: (fraction of the run, lr level reached there relative to the
#: initial lr). Sensible: 5% at the end; aggressive: 1% after a fifth of the run.
EXPONENTIAL_SCHEDULES = {"sensible": (1.0, 0.05), "too_high": (1.0, 0.05), "too_aggressive": (0.2, 0.01)}

#: The seven (schedule, setting) slots every task gets.
SLOTS = (
    ("constant", "sensible"),
    ("constant", "too_high"),
    ("step", "sensible"),
    ("step", "too_high"),
    ("step", "too_aggressive"),
    ("exponential", "sensible"),
    ("exponential", "too_aggressive"),
)

#: Runs with an lr above the stability ceiling: (task, optimizer, schedule, lr, seed).
DIVERGING = (
    ("digits", "momentum", "constant", 0.5, 0),
    ("digits", "sgd", "constant", 3.0, 2),
    ("wine", "sgd", "constant", 3.0, 1),
    ("clusters", "momentum", "step", 2.0, 0),
    ("linreg", "sgd", "constant", 0.4, 1),
    ("linreg", "momentum", "constant", 0.2, 2),
    ("moons", "momentum", "constant", 3.0, 0),
)

#: Extra run for the one task that cannot diverge: a too-high lr under a slow exponential decay.
EXTRA = (("breast_cancer", "adam", "exponential", "too_high", 1),)

#: Held out from tuning: every run of these seeds and every run of these tasks.
HELD_OUT_SEEDS = frozenset({2})
HELD_OUT_TASKS = frozenset({"moons"})

N_SEEDS = 3
#: The *fresh* corpus repeats every run with its seed shifted by this offset (seeds 10–12): runs
#: first built after the detector's thresholds were set, and never looked at while
#: choosing them — unlike the held-out split, which was scored after every change.
FRESH_SEED_OFFSET = 10


def _spec(task: str, optimizer: str, schedule: str, setting: str, seed: int, lr: float | None = None) -> RunSpec:
    """A run whose step/exponential parameters follow the module constants and the task's length."""
    n = load_task(task).n_steps
    sensible, too_high = LEARNING_RATES[task][optimizer]
    if lr is None:
        lr = too_high if setting == "too_high" else sensible
    step_size = gamma = None
    if schedule == "step":
        fraction, gamma = STEP_SCHEDULES[setting]
        step_size = round(fraction * n)
    elif schedule == "exponential":
        fraction, level = EXPONENTIAL_SCHEDULES[setting]
        gamma = level ** (1.0 / (fraction * n))
    return RunSpec(task, optimizer, schedule, setting, lr, seed, step_size=step_size, gamma=gamma)


def corpus_specs(seed_offset: int = 0) -> list[RunSpec]:
    """All runs of the corpus, in a fixed order, each seed shifted by ``seed_offset`` (0, or
    ``FRESH_SEED_OFFSET`` for the fresh corpus)."""
    specs = []
    for k, task in enumerate(TASK_NAMES):
        for c, (schedule, setting) in enumerate(SLOTS):
            optimizer = OPTIMIZERS[(c + k) % len(OPTIMIZERS)]
            specs.append(_spec(task, optimizer, schedule, setting, seed=(2 * c + k) % N_SEEDS + seed_offset))
    for task, optimizer, schedule, setting, seed in EXTRA:
        specs.append(_spec(task, optimizer, schedule, setting, seed + seed_offset))
    for task, optimizer, schedule, lr, seed in DIVERGING:
        specs.append(_spec(task, optimizer, schedule, "diverging", seed + seed_offset, lr=lr))
    return specs


def split_of(spec: RunSpec) -> str:
    """``"fresh"`` for a run of the fresh corpus, ``"held-out"`` for a run of a held-out seed or task,
    else ``"tuning"``."""
    if spec.seed >= N_SEEDS:
        return "fresh"
    return "held-out" if spec.seed in HELD_OUT_SEEDS or spec.task in HELD_OUT_TASKS else "tuning"
