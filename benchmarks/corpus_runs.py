"""One labelled run of the diagnosis corpus: train, measure every optimizer step, label by counterfactual.

Step convention (used for every series and label): index ``t`` = 0, 1, …, n−1 is the t-th optimizer
update (0-based), the default ``steps`` of ``lrwatch.analyze``.

* ``lr[t]``          the learning rate of param group 0 used by update t,
* ``displacement[t]`` ||w after update t − w before update t||₂ over all parameters (float64),
* ``grad_norm[t]``   ||g||₂ of the minibatch gradient that update t used (float64),
* ``loss[t]``        the minibatch loss at the weights before update t (the loss whose gradient it used),
* ``descent[t]``     −⟨w after update t − w before it, g_t⟩ in float64: the first-order decrease of that
                     minibatch loss the update promised (what ``lrwatch``'s StepMeter logs),
* ``momentum[t]``    the optimizer's momentum coefficient β (SGD's momentum, Adam's β₁; 0 for plain SGD).

So for plain SGD ``displacement[t] == lr[t] * grad_norm[t]`` (up to float32 rounding of the weights).
A *drop* of a step schedule is the first index whose update used the lower lr: with ``StepLR(step_size=T)``
stepped once after every update, update t uses ``lr0 * gamma ** (t // T)``, so the drops are T, 2T, …

Counterfactual labels (shared/DESIGN.md "Judging a diagnosis"): at checkpoint t the state after update t
is copied and trained on for ``window`` updates on the same minibatches the run itself would see next,
three ways, and the full-data losses after the window are compared:

* keep:    the lr as scheduled;
* drop:    the rest of the schedule scaled by ``DROP_FACTOR`` (the schedule keeps its shape);
* restore: the schedule suspended and the lr held at the initial lr when it has decayed (to at most
  ``DECAYED_AT_MOST`` of it), else held at ``RAISE_FACTOR`` times the current lr. Holding rather than
  scaling matters under a fast exponential decay, where a scaled schedule would decay away again
  within a few updates and so never test whether the decay itself was the problem.

A branch *wins clearly* when its loss is below (1 − ``WIN_MARGIN``) × the keep loss and the gain is at
least ``MIN_GAIN_FRACTION`` × the run's initial full-data loss; a non-finite loss counts as +inf.
``lr_too_high`` holds at t when drop wins clearly and beats restore; ``decay_too_aggressive`` when the
lr has decayed and restore wins clearly and beats drop. Checkpoints are labelled only before the run
diverges (see ``DIVERGENCE_LOSS_RATIO``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from corpus_tasks import OPTIMIZERS, Task, build_optimizer, load_task

# ---- labelling thresholds: the benchmark's own, fixed before any detector was scored ----------------
#: Updates before the first checkpoint: early training is transient for every setting.
WARMUP_STEPS = 50
#: Updates between checkpoints.
CHECKPOINT_EVERY = 25
#: Updates each counterfactual branch trains for.
WINDOW = 50
#: The "drop" branch scales the rest of the schedule by this factor.
DROP_FACTOR = 0.1
#: The "restore" branch holds an undecayed lr at this multiple of the current lr.
RAISE_FACTOR = 10.0
#: The lr counts as decayed when it is at most this fraction of the initial lr.
DECAYED_AT_MOST = 0.5
#: A branch wins clearly when its loss is below (1 − WIN_MARGIN) × the keep branch's loss …
WIN_MARGIN = 0.1
#: … and the gain is at least this fraction of the run's initial full-data loss (so that differences
#: between two near-zero losses on separable data do not count).
MIN_GAIN_FRACTION = 0.01
#: A run diverges when a loss or displacement is non-finite or the minibatch loss exceeds this
#: multiple of the initial full-data loss.
DIVERGENCE_LOSS_RATIO = 1e6
#: A run that never blows up has still diverged, slowly, when the median of its last ``END_SAMPLES``
#: minibatch losses exceeds this multiple of the initial full-data loss: training left it worse than it
#: began. (A cross-entropy loss grows only linearly with the weights, so a run can climb 100x over
#: hundreds of steps without nearing DIVERGENCE_LOSS_RATIO.) The same ratio as the closed-loop
#: benchmark's divergence test.
SLOW_DIVERGENCE_RATIO = 2.0
END_SAMPLES = 50

SCHEDULES = ("constant", "step", "exponential")
SETTINGS = ("sensible", "too_high", "too_aggressive", "diverging")


@dataclass(frozen=True)
class Labelling:
    """Where checkpoints go and how long branches run (defaults: the constants above)."""

    warmup: int = WARMUP_STEPS
    every: int = CHECKPOINT_EVERY
    window: int = WINDOW

    def checkpoints(self, n_steps: int) -> range:
        """Checkpoint indices in a run of ``n_steps`` updates: warmup, warmup + every, … < n_steps."""
        return range(self.warmup, n_steps, self.every)


@dataclass(frozen=True)
class RunSpec:
    """What to train. ``lr`` is the initial lr; ``gamma`` is StepLR's factor per drop or ExponentialLR's
    factor per update; ``step_size`` is StepLR's period in updates; ``n_steps`` overrides the task's
    run length (for short smoke runs). ``setting`` names the intent of the run (one of ``SETTINGS``);
    it is not a label — the labels come from the counterfactual branches."""

    task: str
    optimizer: str
    schedule: str
    setting: str
    lr: float
    seed: int
    step_size: int | None = None
    gamma: float | None = None
    n_steps: int | None = None

    def __post_init__(self):
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("setting", SETTINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        needs = {"constant": (), "step": ("step_size", "gamma"), "exponential": ("gamma",)}[self.schedule]
        for name in ("step_size", "gamma"):
            if (getattr(self, name) is not None) != (name in needs):
                raise ValueError(f"{name} is {'required' if name in needs else 'not used'} for a "
                                 f"{self.schedule} schedule, got {getattr(self, name)!r}")

    @property
    def name(self) -> str:
        return f"{self.task}/{self.optimizer}/{self.schedule}/{self.setting}/seed{self.seed}"

    def length(self, task: Task) -> int:
        return self.n_steps if self.n_steps is not None else task.n_steps

    def true_drops(self, n_steps: int) -> list[int]:
        """Indices of the updates that first used a lower lr (step schedules only)."""
        if self.schedule != "step":
            return []
        return list(range(self.step_size, n_steps, self.step_size))


@dataclass(frozen=True)
class Checkpoint:
    """Counterfactual outcome at one checkpoint. Losses are full-data losses (``inf`` if diverged);
    ``lr_next`` is the lr the next update would use, ``restore_lr`` the lr the restore branch held."""

    step: int
    lr_next: float
    decayed: bool
    restore_lr: float
    loss_now: float
    loss_keep: float
    loss_drop: float
    loss_restore: float
    lr_too_high: bool
    decay_too_aggressive: bool


@dataclass
class RunRecord:
    """A trained run: per-update series (shape (n_steps,), float64), ground truth, checkpoint labels."""

    spec: RunSpec
    displacement: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    loss: np.ndarray
    descent: np.ndarray
    momentum: np.ndarray
    start_loss: float
    drops: list[int]
    first_nonfinite: int | None
    divergence_step: int | None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    #: Per checkpoint, its labels again on independent minibatch windows (``train_run(redraws=...)``;
    #: the label-consistency study). Not cached.
    redrawn: list[list[Checkpoint]] = field(default_factory=list)

    @property
    def blew_up(self) -> bool:
        """A non-finite value or a loss above DIVERGENCE_LOSS_RATIO × the start, at ``divergence_step``."""
        return self.divergence_step is not None

    @property
    def climbed(self) -> bool:
        """Diverged slowly: no blow-up, but the run ends above SLOW_DIVERGENCE_RATIO × its start loss."""
        return not self.blew_up and bool(np.median(self.loss[-END_SAMPLES:]) > SLOW_DIVERGENCE_RATIO * self.start_loss)

    @property
    def diverged(self) -> bool:
        return self.blew_up or self.climbed

    def first_doubled(self, window: int = 100) -> int | None:
        """First step at which the median of the last ``window`` minibatch losses exceeds
        SLOW_DIVERGENCE_RATIO × the start loss (None: never): where a slow divergence shows."""
        for t in range(window - 1, len(self.loss)):
            if np.median(self.loss[t - window + 1 : t + 1]) > SLOW_DIVERGENCE_RATIO * self.start_loss:
                return t
        return None

    @property
    def onset(self) -> int:
        """Where a diverged run's divergence is scored from: the blow-up step, or the run's length for a
        slow divergence (it has no blow-up inside the run, so a flag anywhere in it comes before one)."""
        return self.divergence_step if self.blew_up else len(self.loss)


def build_scheduler(spec: RunSpec, optimizer: torch.optim.Optimizer):
    """StepLR / ExponentialLR for the spec's schedule, stepped once per update; None for constant."""
    if spec.schedule == "constant":
        return None
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
    if spec.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=spec.gamma)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {spec.schedule!r}")


def minibatch_indices(n_samples: int, batch_size: int, n_batches: int, seed: int) -> np.ndarray:
    """Sample indices of ``n_batches`` minibatches, shape (n_batches, batch_size): shuffled epochs
    without replacement, the incomplete last batch of each epoch dropped."""
    rng = np.random.default_rng(seed)
    per_epoch = n_samples // batch_size
    epochs = [rng.permutation(n_samples)[: per_epoch * batch_size] for _ in range(-(-n_batches // per_epoch))]
    return np.concatenate(epochs).reshape(-1, batch_size)[:n_batches]


def _norm64(tensors) -> float:
    """||concatenation of tensors||₂ with float64 accumulation."""
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def step_and_measure(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> tuple[float, float]:
    """Run ``optimizer.step()`` and return (||w_after − w_before||₂, −⟨w_after − w_before, g⟩) over
    ``params``, in float64 (exact for the update; non-finite if the weights are)."""
    before = [p.detach().clone() for p in params]
    optimizer.step()
    steps = [p.detach().double() - b.double() for p, b in zip(params, before)]
    descent = -sum(float((s * p.grad.double()).sum()) for s, p in zip(steps, params) if p.grad is not None)
    return _norm64(steps), descent


def train_update(task: Task, model, optimizer, batch: np.ndarray) -> tuple[float, float, float, float]:
    """One minibatch update; returns (minibatch loss before it, gradient norm, displacement, descent)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    loss = task.loss(model(task.inputs[batch]), task.targets[batch])
    loss.backward()
    grad_norm = _norm64(p.grad for p in params if p.grad is not None)
    return float(loss.detach()), grad_norm, *step_and_measure(optimizer, params)


def _branch_loss(task, spec, model, optimizer, scheduler, batches: np.ndarray, lr: float) -> float:
    """Full-data loss after training a copy of (model, optimizer) on ``batches``, the first update at
    ``lr``: the schedule goes on from there when ``scheduler`` is given (a copy of it is stepped, and
    StepLR / ExponentialLR scale the lr they find), the lr is held when it is None. The originals are
    left untouched."""
    clone = copy.deepcopy(model)
    branch_optimizer = build_optimizer(spec.optimizer, clone.parameters(), spec.lr)
    branch_scheduler = None if scheduler is None else build_scheduler(spec, branch_optimizer)
    if branch_scheduler is not None:  # torch: load the scheduler before the optimizer state
        branch_scheduler.load_state_dict(scheduler.state_dict())
    branch_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for group in branch_optimizer.param_groups:
        group["lr"] = lr
    with np.errstate(all="ignore"):
        for batch in batches:
            train_update(task, clone, branch_optimizer, batch)
            if branch_scheduler is not None:
                branch_scheduler.step()
    return task.full_loss(clone)


def branch_labels(keep, drop, restore, decayed, gain_floor, margin: float = WIN_MARGIN):
    """(lr_too_high, decay_too_aggressive) from the branches' full-data losses: floats or arrays of one shape
    (elementwise). A branch wins clearly when below (1 − ``margin``) × keep and at least ``gain_floor`` below it."""

    def wins_clearly(candidate):
        return np.logical_and(candidate < (1.0 - margin) * keep, keep - candidate >= gain_floor)

    with np.errstate(invalid="ignore"):  # inf - inf: a diverged keep branch against a diverged candidate
        return (np.logical_and(wins_clearly(drop), drop < restore),
                np.logical_and.reduce([decayed, wins_clearly(restore), restore < drop]))


def label_checkpoint(task, spec, model, optimizer, scheduler, step, batches, start_loss) -> Checkpoint:
    """Counterfactual labels at ``step`` (state after that update); ``batches`` are the next minibatches."""
    lr_next = optimizer.param_groups[0]["lr"]
    decayed = lr_next <= DECAYED_AT_MOST * spec.lr
    restore_lr = spec.lr if decayed else RAISE_FACTOR * lr_next
    keep = _branch_loss(task, spec, model, optimizer, scheduler, batches, lr=lr_next)
    drop = _branch_loss(task, spec, model, optimizer, scheduler, batches, lr=DROP_FACTOR * lr_next)
    restore = _branch_loss(task, spec, model, optimizer, None, batches, lr=restore_lr)
    too_high, too_aggressive = branch_labels(keep, drop, restore, decayed, MIN_GAIN_FRACTION * start_loss)
    return Checkpoint(
        step=step,
        lr_next=lr_next,
        decayed=decayed,
        restore_lr=restore_lr,
        loss_now=task.full_loss(model),
        loss_keep=keep,
        loss_drop=drop,
        loss_restore=restore,
        lr_too_high=bool(too_high),
        decay_too_aggressive=bool(too_aggressive),
    )


def _divergent(loss, displacement, start_loss: float):
    """Elementwise: the loss or displacement is non-finite, or the loss exceeds DIVERGENCE_LOSS_RATIO
    times the initial full-data loss."""
    return ~np.isfinite(loss) | ~np.isfinite(displacement) | (loss > DIVERGENCE_LOSS_RATIO * start_loss)


def _first(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.any() else None


def redraw_window(spec: RunSpec, n_samples: int, batch_size: int, window: int, step: int, draw: int) -> np.ndarray:
    """The ``draw``-th independent window of ``window`` minibatches for relabelling checkpoint ``step`` of
    ``spec``: shape (window, batch_size), from a child of the run's seed (``spawn_key`` (step, draw)), so never
    the run's own sequence (``SeedSequence([seed, 0, 0])`` would be: it pads entropy with zeros)."""
    return minibatch_indices(n_samples, batch_size, window, np.random.SeedSequence(spec.seed, spawn_key=(step, draw)))


def train_run(spec: RunSpec, labelling: Labelling = Labelling(), redraws: int = 0) -> RunRecord:
    """Train ``spec`` with a plain loop, measuring every update and labelling every checkpoint that
    comes before the run diverges; with ``redraws`` each checkpoint is labelled that many times more,
    each on an independent window (``redraw_window``), into ``RunRecord.redrawn``."""
    task = load_task(spec.task)
    n_steps = spec.length(task)
    batches = minibatch_indices(len(task.inputs), task.batch_size, n_steps + labelling.window, spec.seed)
    model = task.build_model(spec.seed)
    optimizer = build_optimizer(spec.optimizer, model.parameters(), spec.lr)
    scheduler = build_scheduler(spec, optimizer)
    start_loss = task.full_loss(model)
    series = np.full((6, n_steps), np.nan)  # displacement, lr, grad_norm, loss, descent, momentum
    checkpoints = set(labelling.checkpoints(n_steps))
    labels: list[Checkpoint] = []
    redrawn: list[list[Checkpoint]] = []
    diverged = False
    with np.errstate(all="ignore"):
        for t in range(n_steps):
            group = optimizer.param_groups[0]
            series[1, t], series[5, t] = group["lr"], group["betas"][0] if "betas" in group else group.get("momentum", 0.0)
            series[3, t], series[2, t], series[0, t], series[4, t] = train_update(task, model, optimizer, batches[t])
            if scheduler is not None:
                scheduler.step()
            diverged = diverged or bool(_divergent(series[3, t], series[0, t], start_loss))
            if t in checkpoints and not diverged:
                window = batches[t + 1 : t + 1 + labelling.window]
                labels.append(label_checkpoint(task, spec, model, optimizer, scheduler, t, window, start_loss))
                if redraws:
                    redrawn.append([label_checkpoint(task, spec, model, optimizer, scheduler, t,
                                                     redraw_window(spec, len(task.inputs), task.batch_size,
                                                                   labelling.window, t, k), start_loss)
                                    for k in range(redraws)])
    displacement, lr, grad_norm, loss, descent, momentum = series
    return RunRecord(
        spec=spec,
        displacement=displacement,
        lr=lr,
        grad_norm=grad_norm,
        loss=loss,
        descent=descent,
        momentum=momentum,
        start_loss=start_loss,
        drops=spec.true_drops(n_steps),
        first_nonfinite=_first(~np.isfinite(series[:4]).all(axis=0)),
        divergence_step=_first(_divergent(loss, displacement, start_loss)),
        checkpoints=labels,
        redrawn=redrawn,
    )
