"""Acting on a torch lr schedule and on the optimizer's state at a drop (torch only, no Lightning).

Three kinds of scheduler can be acted on exactly, because each is *chainable* (it multiplies the
current lr) and its position is its ``last_epoch`` counter:

- ``StepLR`` and ``MultiStepLR``: a drop is brought forward by applying it now and moving the
  scheduler's clock to the boundary where it was due, so later drops keep their spacing and none is
  repeated or lost; a drop is held back by rewinding the clock one step and undoing the decrease
  whenever it would cross a boundary.
- ``ExponentialLR``: a one-time multiplicative drop; holding pauses the per-step decay.

Anything else (cosine, one-cycle, ReduceLROnPlateau, LambdaLR …) is `UNSUPPORTED`: the caller warns
and does not act, rather than fight the scheduler.

Optimizer state at a drop (shared/DESIGN.md): a momentum buffer that carries the lr inside it
(v ← βv + ηg, w ← w − v, e.g. Keras-style SGD) keeps the old lr's scale after a drop and overshoots;
PyTorch's SGD keeps the lr outside (v ← βv + g, w ← w − ηv) and Adam's first moment is on the gradient
scale, so for them the buffer needs no correction. `momentum_carries_lr` tells which case an
optimizer is; `reset_momentum` and `damp_momentum` are the two corrections.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler

STEP, MULTISTEP, EXPONENTIAL, NONE, UNSUPPORTED = "step", "multistep", "exponential", "none", "unsupported"

_MOMENTUM_BUFFERS = ("momentum_buffer", "exp_avg")  # SGD/RMSprop's buffer; Adam(W)'s first moment


def scheduler_kind(scheduler) -> str:
    """`STEP`, `MULTISTEP`, `EXPONENTIAL`, `NONE` (no scheduler) or `UNSUPPORTED`."""
    if scheduler is None:
        return NONE
    if type(scheduler) is lr_scheduler.StepLR:
        return STEP
    if type(scheduler) is lr_scheduler.MultiStepLR:
        return MULTISTEP
    if type(scheduler) is lr_scheduler.ExponentialLR:
        return EXPONENTIAL
    return UNSUPPORTED


def scheduled_gamma(scheduler) -> float | None:
    """The factor of one scheduled drop (StepLR/MultiStepLR), or None."""
    return float(scheduler.gamma) if scheduler_kind(scheduler) in (STEP, MULTISTEP) else None


def _next_boundary(scheduler) -> tuple[int, int] | None:
    """(step of the next scheduled drop, how many drops happen there), or None when none is left."""
    t = scheduler.last_epoch
    if scheduler_kind(scheduler) == STEP:
        return scheduler.step_size * (t // scheduler.step_size + 1), 1
    milestones = sorted(scheduler.milestones.elements())
    later = milestones[bisect_right(milestones, t):]
    return (later[0], later.count(later[0])) if later else None


def _scale_lrs(optimizer: torch.optim.Optimizer, factor: float, min_lr: float) -> list[float]:
    """Multiply every group's lr by factor, not below min_lr (nor raise one already below it)."""
    new = []
    for group in optimizer.param_groups:
        lr = group["lr"]
        group["lr"] = lr * factor if factor >= 1 else max(lr * factor, min(min_lr, lr))
        new.append(group["lr"])
    return new


def _sync_last_lr(scheduler, optimizer) -> None:
    if scheduler is not None:
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def drop_now(optimizer, scheduler, factor: float | None, min_lr: float) -> float:
    """Take the next drop now; returns the factor applied.

    StepLR/MultiStepLR: their own γ (ignoring ``factor``), clock moved to the boundary. ExponentialLR or
    no scheduler: ``factor`` (default 0.1), one time. Raises ValueError for unsupported schedulers and
    when a multistep schedule has no drop left (the caller checks `can_drop` first).
    """
    kind = scheduler_kind(scheduler)
    if kind in (STEP, MULTISTEP):
        boundary = _next_boundary(scheduler)
        if boundary is None:
            raise ValueError("scheduler has no scheduled drop left")
        step, count = boundary
        applied = scheduler.gamma**count
        scheduler.last_epoch = step
    elif kind in (EXPONENTIAL, NONE):
        applied = 0.1 if factor is None else factor
    else:
        raise ValueError(f"scheduler {type(scheduler).__name__} is not supported")
    _scale_lrs(optimizer, applied, min_lr)
    _sync_last_lr(scheduler, optimizer)
    return applied


def can_drop(scheduler) -> bool:
    """Whether `drop_now` can act on this scheduler at this point."""
    kind = scheduler_kind(scheduler)
    if kind in (STEP, MULTISTEP):
        return _next_boundary(scheduler) is not None
    return kind in (EXPONENTIAL, NONE)


def undo_last_decay(optimizer, scheduler, lrs_before: list[float]) -> bool:
    """Hold: if the scheduler's last step lowered any lr, restore ``lrs_before`` and rewind its clock
    one step, so the same decrease is due again next step. Returns whether anything was undone."""
    if scheduler_kind(scheduler) not in (STEP, MULTISTEP, EXPONENTIAL):
        return False
    lowered = any(g["lr"] < before for g, before in zip(optimizer.param_groups, lrs_before))
    if lowered:
        for group, before in zip(optimizer.param_groups, lrs_before):
            group["lr"] = before
        scheduler.last_epoch -= 1
        _sync_last_lr(scheduler, optimizer)
    return lowered


# -- optimizer state at a drop ---------------------------------------------------------------------
def momentum_carries_lr(optimizer) -> bool:
    """True when the optimizer's momentum buffer has the lr folded in (v ← βv + ηg).

    PyTorch's SGD, Adam, AdamW, RMSprop … keep the lr outside their buffers: False. An optimizer of
    the folded kind declares it with a class or instance attribute ``momentum_carries_lr = True``.
    """
    return bool(getattr(optimizer, "momentum_carries_lr", False))


def reset_momentum(optimizer) -> int:
    """Zero the momentum buffers (SGD ``momentum_buffer``, Adam ``exp_avg``); returns how many."""
    count = 0
    for state in optimizer.state.values():
        for key in _MOMENTUM_BUFFERS:
            if isinstance(state.get(key), torch.Tensor):
                state[key].zero_()
                count += 1
    return count


@dataclass
class MomentumDamping:
    """A temporarily reduced momentum coefficient on every group, restored after ``steps`` steps.

    Works on groups with ``momentum`` (SGD) or ``betas`` (Adam family, β₁ only)."""

    beta: float
    steps: int
    saved: list[tuple[str, object]] | None = None

    def apply(self, optimizer) -> None:
        self.saved = []
        for group in optimizer.param_groups:
            if "betas" in group:
                self.saved.append(("betas", group["betas"]))
                group["betas"] = (min(self.beta, group["betas"][0]), group["betas"][1])
            elif "momentum" in group:
                self.saved.append(("momentum", group["momentum"]))
                group["momentum"] = min(self.beta, group["momentum"])
            else:
                self.saved.append(("", None))

    def tick(self, optimizer, steps: int = 1) -> bool:
        """Count ``steps`` optimizer steps; restore the coefficients when done. Returns True while still damping."""
        self.steps -= steps
        if self.steps > 0:
            return True
        for group, (key, value) in zip(optimizer.param_groups, self.saved or []):
            if key:
                group[key] = value
        return False


def decoupled_weight_decay(optimizer) -> bool:
    """True for optimizers whose weight decay is decoupled (w ← w(1 − ηλ)): AdamW, or Adam/… with
    ``decoupled_weight_decay=True``."""
    if isinstance(optimizer, torch.optim.AdamW):
        return True
    return any(group.get("decoupled_weight_decay", False) for group in optimizer.param_groups)


def couple_weight_decay(optimizer, base: list[tuple[float, float]]) -> None:
    """Set every group's weight decay to λ₀·η₀/η so that η·λ stays at its initial η₀·λ₀.

    ``base`` holds each group's (η₀, λ₀) from when coupling started."""
    for group, (lr0, wd0) in zip(optimizer.param_groups, base):
        if group["lr"] > 0 and math.isfinite(group["lr"]):
            group["weight_decay"] = wd0 * lr0 / group["lr"]
