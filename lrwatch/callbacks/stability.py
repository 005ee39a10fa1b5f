"""``StabilityProbe``: the sharpness λ_max of the training loss against the stability ceiling of the lr.

On a quadratic, gradient descent with lr η contracts along a direction of curvature λ iff η·λ < 2, so
2/η is a ceiling on the sharpness a run can sit at; above it the step overshoots along the sharpest direction
and the loss oscillates or blows up until the curvature falls ("edge of stability"). Every ``every_n_steps``
optimizer steps this callback estimates λ_max on the current batch by power iteration on Hessian-vector
products (:mod:`lrwatch.hessian`) and logs it with the ceiling of the optimizer's update rule
(:class:`lrwatch.hessian.UpdateRule`: momentum raises the ceiling to 2(1+β)/η, Adam and RMSprop are measured
as the preconditioned sharpness λ_max(P⁻¹H) against their own ceiling).

Tags, at ``trainer.global_step`` of the probe (rank zero, every logger of the trainer):
``lrwatch/sharpness`` (the largest eigenvalue of P⁻¹H, P = I for SGD; loss units per parameter unit², or per
lr unit when preconditioned), ``lrwatch/stability_ceiling`` (in the same units; per group as
``lrwatch/stability_ceiling/<group name or pg<i>>`` when the group lrs differ), ``lrwatch/sharpness_ratio``
(sharpness / ceiling; = η·λ_max/2 for plain SGD, > 1 means unstable), ``lrwatch/negative_curvature`` (only when
a negative eigenvalue dominates in magnitude: the loss is saddle-shaped there) and
``lrwatch/diagnosis/above_stability_ceiling`` (1 while the ratio is above 1, else 0).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from lrwatch import tags
from lrwatch._lightning import Callback, pl, rank_zero_warn
from lrwatch.callbacks._logging import log_metrics
from lrwatch.callbacks._resume import FitState
from lrwatch.diagnosis import Diagnosis
from lrwatch.hessian import UpdateRule, top_hessian_eigenvalue, update_rule

SHARPNESS_TAG = tags.SHARPNESS
CEILING_TAG = tags.STABILITY_CEILING
RATIO_TAG = tags.SHARPNESS_RATIO
NEGATIVE_CURVATURE_TAG = tags.NEGATIVE_CURVATURE
KIND = "above_stability_ceiling"
DIAGNOSIS_TAG = tags.diagnosis_tag(KIND)

UNSTABLE_RATIO = 1.0
"""Sharpness / ceiling above which the update is unstable. Exactly 1 by the theory; not a tuning knob."""


class StabilityProbe(FitState, Callback):
    """Every ``every_n_steps`` optimizer steps, λ_max of the training loss on the current batch vs the ceiling.

    Reads the model and the optimizer, changes neither: Hessian-vector products go through
    ``torch.autograd.grad`` (no ``.grad`` is touched, no optimizer steps), the global RNG state is restored
    afterwards, and ``self.log`` calls inside a re-run ``training_step`` are muted.

    Cost: a probe is one forward, one backward and up to ``iters`` Hessian-vector products, with a host sync per
    iteration. Measured on CPU MLPs, one product cost 0.6 to 1.9 training steps, so a probe cost 6 to 40
    steps (about 6 on the small MLP of ``benchmarks/stability_overhead.py``, where Lightning's per-step overhead
    dominates; about 40 for 20 products in a compute-bound three-layer MLP). The overhead is that cost divided
    by ``every_n_steps``: the default of 1000 keeps it under 5% in all of these (on the small MLP, 100 measured
    7.5% more CPU time per fit and 200 measured 4.4%).

    Args:
        every_n_steps: probe when ``trainer.global_step`` (after the step) is a positive multiple of this (int ≥ 1).
        iters: most power iterations per probe (int ≥ 1), one Hessian-vector product each. The previous probe's
            vector is the warm start; what that saves depends on how far the top eigenvector moves between
            probes (on the benchmark MLP, probes still took 10 to 20 iterations).
        tol: relative change of the eigenvalue estimate between iterations that counts as converged (> 0). It is
            not an error bound: with a small gap between the top eigenvalues the error is a few times ``tol``.
        loss_fn: ``loss_fn(pl_module, batch) -> scalar loss tensor``. Default None re-runs
            ``pl_module.training_step(batch, batch_idx)`` and takes its loss (the tensor, or ``["loss"]`` of a
            dict), with ``self.log`` muted during the re-run; other side effects of ``training_step`` (metric
            objects updated inside it, counters) happen a second time, so pass ``loss_fn`` when it has any.
            Required under manual optimization, where re-running ``training_step`` would step the optimizer.

    Notes:
        * The module stays in train mode: dropout and batch-norm in batch mode make the loss, hence the Hessian,
          random and batch-coupled, and the HVP estimate noisy; the probe sees what the step sees. The RNG
          state is forked, so the probe's dropout masks do not shift the training run's random stream.
        * The Hessian is that of optimizer 0's moving parameters on the batch of the step that was just taken
          (the last micro-batch under gradient accumulation), at the weights after that step, against the lr
          in the param groups then: the lr of the next step, unless an epoch-interval scheduler changes it at
          the end of the epoch.
        * Under DDP every rank probes its own batch (no collectives), and rank zero logs: the logged sharpness
          and ``diagnoses`` are those of rank 0's batch. Sharded strategies (FSDP, DeepSpeed ZeRO-3) are not
          supported: the local parameters are shards.
        * Power iteration finds the eigenvalue of largest magnitude. When that one is negative, a second
          iteration on the shifted operator finds the largest positive eigenvalue, which is what the ceiling
          concerns, and the negative one is logged as ``lrwatch/negative_curvature``.

    Attributes:
        diagnoses: every ``above_stability_ceiling`` episode (``lrwatch.Diagnosis``); ``end`` is the last probe
            step at which it held, None while it still holds.
        last: the figures of the latest probe (``step``, ``sharpness``, ``lr``, ``iters``, and ``ceiling``,
            ``ratio`` when the optimizer is modelled), empty before the first.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        iters: int = 20,
        tol: float = 1e-3,
        loss_fn: Callable[[pl.LightningModule, Any], Tensor] | None = None,
    ):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, numbers.Integral) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an int >= 1, got {every_n_steps!r}")
        if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 1:
            raise ValueError(f"iters must be an int >= 1, got {iters!r}")
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0 < tol < math.inf):
            raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable or None, got {loss_fn!r}")
        self.every_n_steps = int(every_n_steps)
        self.iters = int(iters)
        self.tol = float(tol)
        self.loss_fn = loss_fn
        self._start_run()
        self._state_key = self._generate_state_key(every_n_steps=self.every_n_steps, iters=self.iters, tol=self.tol)

    def _start_run(self) -> None:
        """Forget an earlier fit's probes: a new fit (not one resumed from a checkpoint) is a new run, whose
        episodes, step count and warnings are its own."""
        self.diagnoses: list[Diagnosis] = []
        self.last: dict[str, float] = {}
        self._last_probe_step = 0
        self._held_at: int | None = None  # last probe step at which the active episode held
        self._warned: set[str] = set()
        self._vector: list[Tensor] | None = None  # warm start: the previous probe's eigenvector

    @property
    def state_key(self) -> str:
        # Lightning formats this into a profiler label on every hook call of every step: build it once
        return self._state_key

    def state_dict(self) -> dict[str, Any]:
        return {
            "diagnoses": [dataclasses.asdict(d) for d in self.diagnoses],
            "last_probe_step": self._last_probe_step,
            "held_at": self._held_at,
            "warned": sorted(self._warned),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.diagnoses = [Diagnosis(**d) for d in state_dict["diagnoses"]]
        self._last_probe_step = state_dict["last_probe_step"]
        self._held_at = state_dict["held_at"]
        self._warned = set(state_dict["warned"])
        self._state_loaded()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._fit_starts():
            self._start_run()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.loss_fn is None and not pl_module.automatic_optimization:
            raise ValueError(
                "loss_fn must be given under manual optimization (automatic_optimization=False): re-running "
                "training_step there would step the optimizer; got loss_fn=None"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last_probe_step or not trainer.optimizers:
            return  # not a probe step, a further micro-batch of an already probed step, or nothing to probe
        self._last_probe_step = step
        rule = update_rule(trainer.optimizers[0])
        if not rule.params:
            return
        sharpness, negative, n_iters = self._sharpness(rule, pl_module, batch, batch_idx)
        if sharpness is None:
            return
        metrics = {SHARPNESS_TAG: sharpness}
        if negative is not None:
            metrics[NEGATIVE_CURVATURE_TAG] = negative
        self.last = {"step": step, "sharpness": sharpness, "lr": rule.lr, "iters": n_iters}
        if rule.ceiling is None:
            self._warn_once("unmodelled", f"StabilityProbe: {rule.note}; logging {SHARPNESS_TAG} only.")
        else:
            ratio = sharpness / rule.ceiling
            self.last.update(ceiling=rule.ceiling, ratio=ratio)
            metrics.update({CEILING_TAG: rule.ceiling, RATIO_TAG: ratio, **_group_ceilings(trainer, rule)})
            metrics[DIAGNOSIS_TAG] = float(self._track(step, rule, sharpness, ratio))
        if trainer.is_global_zero:
            log_metrics(trainer, metrics, step)

    def _sharpness(self, rule: UpdateRule, pl_module, batch, batch_idx) -> tuple[float | None, float | None, int]:
        """(largest eigenvalue of P⁻¹H, the dominant negative one if any, iterations); None when not measurable."""
        closure = self._closure(pl_module, batch, batch_idx)
        warm = self._vector if _same_shapes(self._vector, rule.params) else None
        device = rule.params[0].device
        on_cpu = device.type == "cpu"
        fork = {"devices": []} if on_cpu else {"devices": [device.index or 0], "device_type": device.type}
        try:
            with torch.random.fork_rng(**fork):
                common = dict(iters=self.iters, tol=self.tol, preconditioner=rule.preconditioner)
                value, vector, n_iters = top_hessian_eigenvalue(closure, rule.params, init=warm, **common)
                negative = None
                if value < 0:
                    negative = value
                    value, vector, more = top_hessian_eigenvalue(closure, rule.params, shift=value, **common)
                    n_iters += more
        except _NoLoss:
            self._warn_once("no_loss", "StabilityProbe: training_step returned no loss for a probed batch; skipped.")
            return None, None, 0
        if not math.isfinite(value):
            self._vector = None
            self._warn_once("nonfinite", "StabilityProbe: the sharpness is not finite (has training diverged?).")
            return None, None, n_iters
        self._vector = vector
        return value, negative, n_iters

    def _closure(self, pl_module, batch, batch_idx) -> Callable[[], Tensor]:
        if self.loss_fn is not None:
            return lambda: self.loss_fn(pl_module, batch)

        def rerun_training_step() -> Tensor:
            with _logging_muted(pl_module):
                if len(inspect.signature(pl_module.training_step).parameters) >= 2:
                    out = pl_module.training_step(batch, batch_idx)
                else:
                    out = pl_module.training_step(batch)
            loss = out.get("loss") if isinstance(out, Mapping) else out
            if loss is None:
                raise _NoLoss
            return loss

        return rerun_training_step

    def _track(self, step: int, rule: UpdateRule, sharpness: float, ratio: float) -> bool:
        """Open, extend or close the ``above_stability_ceiling`` episode; returns whether it holds at ``step``."""
        active = bool(self.diagnoses) and self.diagnoses[-1].end is None
        above = ratio > UNSTABLE_RATIO
        if above and not active:
            diagnosis = Diagnosis(
                kind=KIND,
                start=step,
                end=None,
                message=_message(rule, sharpness, ratio),
                evidence={"sharpness": sharpness, "ceiling": rule.ceiling, "ratio": ratio, "lr": rule.lr,
                          "peak_ratio": ratio},
            )
            self.diagnoses.append(diagnosis)
            self._warn_once(
                KIND,
                f"StabilityProbe: {KIND} from step {step}. {diagnosis.message} "
                f"(Later episodes are not warned; see {DIAGNOSIS_TAG} and StabilityProbe.diagnoses.)",
            )
        elif above:
            current = self.diagnoses[-1]
            peak = max(current.evidence["peak_ratio"], ratio)
            self.diagnoses[-1] = dataclasses.replace(current, evidence={**current.evidence, "peak_ratio": peak})
        elif active:
            self.diagnoses[-1] = dataclasses.replace(self.diagnoses[-1], end=self._held_at)
        self._held_at = step if above else None
        return above

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)


class _NoLoss(Exception):
    """training_step returned None (a skipped batch): nothing to differentiate."""


@contextmanager
def _logging_muted(pl_module: pl.LightningModule):
    """Turn ``self.log``/``self.log_dict`` into no-ops for a re-run of ``training_step``.

    Inside a callback hook Lightning files ``self.log`` under that hook's name, so a re-run would overwrite the
    step's logged values with ones computed after the update and skew the epoch aggregates.
    """
    pl_module.log = pl_module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict


def _message(rule: UpdateRule, sharpness: float, ratio: float) -> str:
    what = "sharpness" if rule.preconditioner is None else "preconditioned sharpness"
    return (
        f"The {what} λ_max={sharpness:.4g} is {ratio:.2f}x the stability ceiling {rule.ceiling:.4g} of lr "
        f"{rule.lr:.4g} ({rule.note}), so each step overshoots along the sharpest direction and the loss will "
        f"oscillate or blow up unless the curvature falls; an lr below {rule.lr / ratio:.3g} would be stable."
    )


def _group_ceilings(trainer, rule: UpdateRule) -> dict[str, float]:
    """The ceiling each param group would have on its own, when the group lrs differ."""
    if len(set(rule.group_lrs)) <= 1:
        return {}
    groups = trainer.optimizers[0].param_groups
    return {
        f"{CEILING_TAG}/{group.get('name') or f'pg{i}'}": rule.ceiling * rule.lr / lr if lr > 0 else math.inf
        for i, (group, lr) in enumerate(zip(groups, rule.group_lrs))
    }


def _same_shapes(vector: list[Tensor] | None, params: tuple[Tensor, ...]) -> bool:
    return vector is not None and len(vector) == len(params) and all(
        v.shape == p.shape and v.device == p.device for v, p in zip(vector, params)
    )
