"""How the lr schedule interacts with the optimizer's own state, from measured steps (numpy only).

- `momentum_transients`: at each lr drop, the first displacement after it against γ times the
  displacement before it. 1 means the step shrank exactly with the lr; above 1 the momentum buffer
  still carries the old lr's scale (the overshoot of shared/DESIGN.md), below 1 it was emptied.
- `adam_bias_factor`: the factor (1−β₁^t)/√(1−β₂^t) that Adam's bias correction divides out: the
  step size relative to η that Adam *without* bias correction would take on a constant gradient.
- `WeightDecayFade`: AdamW shrinks weights by (1 − η_t·λ_w) per step, so a decaying lr with a fixed
  λ_w fades the regularisation with it; flags ``weight_decay_faded`` while η·λ_w has fallen more
  than ``fade`` times below its start and λ_w has not been raised to compensate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lrwatch.diagnosis import Diagnosis
from lrwatch.schedules import adam_effective_step

DROP_RATIO = 0.9
"""An lr below this fraction of the previous measured step's lr is a drop."""
BASELINE_STEPS = 5
"""Measured steps before a drop whose median displacement is the transient's reference."""
WEIGHT_DECAY_FADED = "weight_decay_faded"


def momentum_transients(steps: np.ndarray, displacement: np.ndarray, lr: np.ndarray,
                        baseline: int = BASELINE_STEPS, drop_ratio: float = DROP_RATIO) -> list[tuple[int, float]]:
    """(step of the first update at the lower lr, m there / (γ · median m of the ``baseline`` steps
    before)) for every drop in the series; shapes (n,). Drops without a full baseline before them,
    or with a non-finite or zero reference, are skipped."""
    lr = np.asarray(lr, float)
    displacement = np.asarray(displacement, float)
    out = []
    for i in np.flatnonzero(lr[1:] < drop_ratio * lr[:-1]) + 1:
        if i < baseline:
            continue
        reference = np.median(displacement[i - baseline : i]) * lr[i] / lr[i - 1]
        if np.isfinite(reference) and reference > 0 and np.isfinite(displacement[i]):
            out.append((int(steps[i]), float(displacement[i] / reference)))
    return out


def adam_bias_factor(t: np.ndarray, beta1: float, beta2: float) -> np.ndarray:
    """(1−β₁^t)/√(1−β₂^t) for 1-based optimizer steps t, shape of t."""
    return np.asarray(adam_effective_step(np.asarray(t, np.int64), 1.0, beta1, beta2), float)


@dataclass
class WeightDecayFade:
    """Streaming rule over (step, lr, weight_decay) per param group; see the module docstring.

    fade: how many times η·λ_w must have fallen below its first value (with λ_w unchanged) to flag.
    """

    fade: float = 10.0
    # (lr·wd, wd) of each group at its first step, shape (2, groups seen); NaN until a group has a finite step
    _start: np.ndarray = field(default_factory=lambda: np.full((2, 0), np.nan))
    _active: dict[int, Diagnosis] = field(default_factory=dict)  # group -> its open diagnosis
    _ended: list[Diagnosis] = field(default_factory=list)
    _last_step: int = -1

    def __post_init__(self):
        if not (isinstance(self.fade, (int, float)) and self.fade > 1):
            raise ValueError(f"fade must be a number > 1, got {self.fade!r}")

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """Every diagnosis so far, by start step then group."""
        return sorted([*self._ended, *self._active.values()], key=lambda d: (d.start, d.evidence["group"]))

    def update(self, steps: np.ndarray, lr: np.ndarray, weight_decay: np.ndarray) -> None:
        """steps (n,), lr and weight_decay (n, n_groups). A group added later (more columns, NaN before it
        existed) starts from its first finite step."""
        lr, weight_decay = np.asarray(lr, float), np.asarray(weight_decay, float)
        if not len(steps):
            return
        if lr.shape[1] > self._start.shape[1]:
            self._start = np.pad(self._start, ((0, 0), (0, lr.shape[1] - self._start.shape[1])), constant_values=np.nan)
        for g in np.flatnonzero(np.isnan(self._start[1])):
            known = np.flatnonzero(np.isfinite(lr[:, g]) & np.isfinite(weight_decay[:, g]))
            if known.size:
                first = known[0]
                self._start[:, g] = lr[first, g] * weight_decay[first, g], weight_decay[first, g]
        coupled, wd0 = self._start
        faded = (weight_decay == wd0) & (wd0 > 0) & (lr * weight_decay * self.fade < coupled)
        previous_steps = np.concatenate([[self._last_step], steps[:-1]])
        for g in range(faded.shape[1]):
            was = np.concatenate([[g in self._active], faded[:-1, g]])
            for i in np.flatnonzero(faded[:, g] != was):
                if faded[i, g]:
                    self._active[g] = self._diagnosis(g, int(steps[i]), lr[i, g] * weight_decay[i, g] / coupled[g])
                else:
                    d = self._active.pop(g)
                    self._ended.append(Diagnosis(d.kind, d.start, int(previous_steps[i]), d.message, d.evidence))
        self._last_step = int(steps[-1])

    def _diagnosis(self, group: int, step: int, ratio: float) -> Diagnosis:
        return Diagnosis(
            WEIGHT_DECAY_FADED, step, None,
            f"Param group {group}: the effective decoupled weight decay lr*weight_decay is {ratio:.3g} of its start "
            f"while weight_decay is unchanged: regularisation has faded with the lr; scale weight_decay by 1/lr "
            f"(EarlyStepDrop(couple_weight_decay=True)) if it should stay constant.",
            {"group": float(group), "ratio_to_start": float(ratio)},
        )
