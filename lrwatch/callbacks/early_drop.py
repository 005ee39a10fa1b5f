"""`EarlyStepDrop`: act on the diagnoses during training.

- ``lr_too_high`` → take the next scheduled drop now (StepLR/MultiStepLR: their own γ, the scheduler's
  clock moved to that boundary so later drops keep their spacing; ExponentialLR or no scheduler: a
  one-time drop by ``factor``) — by default only once the loss has also stopped making new lows over
  the analyzer's long horizon (``plateau_progress``): a drop that pays soon can still cost the final
  loss where the high lr was making slow progress.
- ``decay_too_aggressive`` → hold scheduled decreases back, for at most ``max_hold`` steps in all,
  until the diagnosis ends (never after an early drop of its own).
- At every drop (its own or the schedule's): the momentum buffer per ``momentum``, and with
  ``couple_weight_decay`` the decoupled weight decay follows λ₀·η₀/η so that η·λ stays constant.

Decisions are taken every ``decide_every`` optimizer steps from rank zero's report and broadcast, so
every rank applies the same action at the same step. The decision logic is `decide`, a plain method;
the Lightning hooks around it only gather inputs and apply the result.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass


from lrwatch import schedule_control as control
from lrwatch import tags
from lrwatch._checks import require_bool, require_int
from lrwatch._lightning import Callback, rank_zero_warn
from lrwatch.callbacks._logging import log_metrics, summary_writers
from lrwatch.callbacks._resume import FitState
from lrwatch.callbacks.watch import LRWatch
from lrwatch.diagnosis import Report
from lrwatch.interactions import DROP_RATIO

MOMENTUM_MODES = ("keep", "reset", "damp")


@dataclass(frozen=True)
class Action:
    """One thing EarlyStepDrop did, at the step from which it affects training."""

    step: int
    kind: str  # "drop" | "hold" | "release"
    reason: str
    lr: float  # lr of group 0 after the action

    def to_dict(self) -> dict:
        return asdict(self)


class EarlyStepDrop(FitState, Callback):
    """Bring lr drops forward when the lr is too high; hold them back when decay is too aggressive.

    Args:
        factor: drop factor with ExponentialLR or no scheduler (StepLR/MultiStepLR always use their own
            γ). Default: the scheduler's γ where it has one, else 0.1.
        cooldown: optimizer steps after any drop (early or scheduled) before an early one may be taken;
            and a diagnosis that started before the last drop is never acted on (it describes the old lr).
        patience: steps the diagnosis must have been active before acting.
        plateau_progress: act on ``lr_too_high`` only while the report's ``loss_progress`` is known and at
            most this: the loss made no new low over the analyzer's long horizon (its windowed median
            against the windows that ended ``stall_windows`` windows earlier: about 300 steps at the
            default window of 100). ``lr_too_high`` says a drop would lower the loss *soon*; a high lr
            that still makes progress is often the better one for the *final* loss (the closed-loop
            benchmark's tuned runs lose 1.2-7x when dropped on the diagnosis alone). None: act on the
            diagnosis alone.
        min_lr: never drop any group below this lr.
        max_drops: at most this many early drops in a run.
        max_hold: at most this many optimizer steps, in all, with a scheduled decrease held back: counted
            from the first decrease a hold undoes, whatever the scheduler's interval (an epoch-interval
            StepLR's decrease is undone once an epoch, and each step until the next counts). No hold is
            started after an early drop of its own (the drop said the lr was too high).
        momentum: at each drop, ``"keep"`` the momentum buffers, ``"reset"`` them to zero, or ``"damp"``:
            use β = ``damp_beta`` for ``damp_steps`` steps.
        couple_weight_decay: keep η·λ_w constant for optimizers with decoupled weight decay (AdamW).
        optimizer_index: which of ``trainer.optimizers`` to act on.
        decide_every: optimizer steps between decisions (one rank-zero broadcast each under DDP).
        watch: options for the `LRWatch` this callback creates when none is attached to the trainer.
    """

    def __init__(
        self,
        factor: float | None = None,
        cooldown: int = 100,
        patience: int = 0,
        plateau_progress: float | None = 0.0,
        min_lr: float = 0.0,
        max_drops: int = 3,
        max_hold: int = 1000,
        momentum: str = "keep",
        damp_beta: float = 0.5,
        damp_steps: int = 20,
        couple_weight_decay: bool = False,
        optimizer_index: int = 0,
        decide_every: int = 50,
        watch: dict | None = None,
    ) -> None:
        if factor is not None and not (isinstance(factor, (int, float)) and 0 < factor < 1):
            raise ValueError(f"factor must be in (0, 1) or None, got {factor!r}")
        for name, value, low in (("cooldown", cooldown, 0), ("patience", patience, 0), ("max_drops", max_drops, 0),
                                 ("max_hold", max_hold, 0), ("damp_steps", damp_steps, 1),
                                 ("optimizer_index", optimizer_index, 0), ("decide_every", decide_every, 1)):
            require_int(name, value, low)
        if plateau_progress is not None and (isinstance(plateau_progress, bool) or not isinstance(
                plateau_progress, (int, float)) or not math.isfinite(plateau_progress)):
            raise ValueError(f"plateau_progress must be a finite number or None, got {plateau_progress!r}")
        if not (isinstance(min_lr, (int, float)) and min_lr >= 0):
            raise ValueError(f"min_lr must be a number >= 0, got {min_lr!r}")
        if momentum not in MOMENTUM_MODES:
            raise ValueError(f"momentum must be one of {MOMENTUM_MODES}, got {momentum!r}")
        if not (isinstance(damp_beta, (int, float)) and 0 <= damp_beta < 1):
            raise ValueError(f"damp_beta must be in [0, 1), got {damp_beta!r}")
        if watch is not None and not isinstance(watch, dict):
            raise ValueError(f"watch must be a dict of LRWatch options, got {watch!r}")
        self.factor, self.cooldown, self.patience, self.min_lr = factor, cooldown, patience, float(min_lr)
        self.plateau_progress = None if plateau_progress is None else float(plateau_progress)
        self.max_drops, self.max_hold, self.momentum = max_drops, max_hold, momentum
        self.damp_beta, self.damp_steps = float(damp_beta), damp_steps
        self.couple_weight_decay = require_bool("couple_weight_decay", couple_weight_decay)
        self.optimizer_index, self.decide_every = optimizer_index, decide_every
        self._watch_options = dict(watch or {})
        self._own_watch = LRWatch(**{"warn": False, "log": False, **self._watch_options})  # validates `watch` now

        self._lrs_before: list[float] = []
        self._steps_before = 0  # trainer.global_step at the current batch's start
        self._updates_before = 0  # the acted-on optimizer's steps (as its meter counts them) at the batch's start
        self._batch_open = False  # on_train_batch_start ran for the batch whose end comes next
        self._watch: LRWatch | None = None
        self._optimizer = self._scheduler = None
        self._acts = False
        self._start_run()

    def _start_run(self) -> None:
        """Forget the decisions of an earlier fit: a new fit (not one resumed from a checkpoint) is a new run,
        with its own optimizer, schedule and step count."""
        self.actions: list[Action] = []
        self._transients_logged = 0
        self._drops_taken = 0
        self._held_steps = 0
        self._holding = False
        self._postponed = False  # this hold has undone a scheduled decrease: its steps count towards max_hold
        self._last_drop_step: int | None = None
        self._wd_base: list[tuple[float, float]] | None = None
        self._damping: control.MomentumDamping | None = None
        self._factor: float | None = None  # the drop factor in use: ``factor``, else the scheduler's γ, else 0.1

    # -- decision (plain logic, no Lightning) ----------------------------------------------------
    def decide(self, report: Report | None, step: int, last_analyzed: int | None) -> str | None:
        """The action to take at ``step`` given the report up to ``last_analyzed``: "drop", "hold",
        "release" or None."""
        if report is None or last_analyzed is None:
            return None
        active = set(report.active(last_analyzed))
        if "diverging" in active:
            return "release" if self._holding else None
        if self._holding:
            if "decay_too_aggressive" not in active or self._held_steps >= self.max_hold:
                return "release"
            return None
        if "lr_too_high" in active and self._may_drop(report, step):
            return "drop"
        # after an early drop of its own it never holds: that drop said the lr was too high, and the lr-budget
        # side of decay_too_aggressive would flag the very drop it took
        if ("decay_too_aggressive" in active and not self._drops_taken and self._held_steps < self.max_hold
                and self._patient(report, "decay_too_aggressive", step)):
            return "hold"
        return None

    def _may_drop(self, report: Report, step: int) -> bool:
        if self._drops_taken >= self.max_drops or not control.can_drop(self._scheduler):
            return False
        if self._last_drop_step is not None and step - self._last_drop_step < self.cooldown:
            return False
        if min(g["lr"] for g in self._optimizer.param_groups) <= self.min_lr:
            return False
        if self.plateau_progress is not None and not (
                report.loss_progress is not None and report.loss_progress <= self.plateau_progress):
            return False
        return self._patient(report, "lr_too_high", step)

    def _patient(self, report: Report, kind: str, step: int) -> bool:
        """The diagnosis is open, started after the last drop (earlier evidence describes the old lr), and
        has lasted ``patience`` steps."""
        starts = [d.start for d in report.diagnoses if d.kind == kind and d.end is None]
        fresh = [s for s in starts if self._last_drop_step is None or s > self._last_drop_step]
        return bool(fresh) and step - max(fresh) >= self.patience

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        if not self._fit_starts():
            self._start_run()
        attached = [cb for cb in trainer.callbacks if isinstance(cb, LRWatch)]
        self._watch = attached[0] if attached else self._own_watch
        if attached and self._watch_options:
            rank_zero_warn("EarlyStepDrop: an LRWatch is attached, so its measurement and thresholds are used and "
                           f"watch={self._watch_options} is ignored.")
        if not attached:
            self._own_watch.on_fit_start(trainer, pl_module)
        optimizers = list(trainer.optimizers)
        if self.optimizer_index >= len(optimizers):
            rank_zero_warn(f"EarlyStepDrop: optimizer_index={self.optimizer_index} but the trainer has "
                           f"{len(optimizers)} optimizer(s); it will not act.")
            self._acts = False
            return
        self._optimizer = optimizers[self.optimizer_index]
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if getattr(c.scheduler, "optimizer", None) is self._optimizer]
        self._scheduler = schedulers[0] if schedulers else None
        kind = control.scheduler_kind(self._scheduler)
        self._acts = kind != control.UNSUPPORTED and len(schedulers) <= 1
        if not self._acts:
            rank_zero_warn(
                f"EarlyStepDrop: {type(self._scheduler).__name__ if len(schedulers) == 1 else f'{len(schedulers)} schedulers'} "
                "cannot be acted on exactly (supported: StepLR, MultiStepLR, ExponentialLR, or none); it will only "
                "watch, not change the lr."
            )
        if self._factor is None:
            self._factor = self.factor if self.factor is not None else control.scheduled_gamma(self._scheduler)
        if self.couple_weight_decay and self._wd_base is None:
            if control.decoupled_weight_decay(self._optimizer):
                self._wd_base = [(g["lr"], g["weight_decay"]) for g in self._optimizer.param_groups]
            else:
                rank_zero_warn(f"EarlyStepDrop: couple_weight_decay needs decoupled weight decay (AdamW); "
                               f"{type(self._optimizer).__name__} has none, so it is ignored.")

    def _updates(self) -> int:
        """Steps of the acted-on optimizer so far, as the meter that measures it counts them."""
        return self._watch.steps_taken(self._watch.names()[self.optimizer_index])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._optimizer is not None:
            self._lrs_before = [g["lr"] for g in self._optimizer.param_groups]
            self._steps_before, self._updates_before, self._batch_open = trainer.global_step, self._updates(), True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._watch is self._own_watch:
            self._own_watch.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self._acts or self._optimizer is None or not self._batch_open:
            return  # (not open: Lightning skipped the start hook of a batch the loader gave as None; nothing stepped)
        self._batch_open = False
        step = trainer.global_step
        # steps of this optimizer in this batch: 0 where it only accumulated gradients (or AMP skipped the step),
        # several where a manual training_step stepped it several times; other optimizers' steps do not count.
        # The damping and the hold budget count these; decisions follow global_step, the same on every rank
        updates = self._updates() - self._updates_before
        if self._wd_base is not None:
            # a group added since (BaseFinetuning) is coupled from its own lr and weight decay, as first seen (before
            # any drop this step takes)
            self._wd_base += [(g["lr"], g["weight_decay"]) for g in self._optimizer.param_groups[len(self._wd_base):]]
        if updates and self._damping is not None and not self._damping.tick(self._optimizer, updates):
            self._damping = None
        if updates and self._holding:
            if self._held_steps >= self.max_hold:
                self._apply(trainer, "release", step)
            else:
                self._postponed |= control.undo_last_decay(self._optimizer, self._scheduler, self._lrs_before)
                self._held_steps += self._postponed * updates
        if self._lrs_before and step > 0:
            self._on_lr_change(self._lrs_before, step)
        if step // self.decide_every > self._steps_before // self.decide_every:  # a multiple reached in this batch
            decision = self.decide(self._watch.report, step, self._last_analyzed()) if trainer.is_global_zero else None
            decision = trainer.strategy.broadcast(decision, src=0)
            if decision is not None:
                self._apply(trainer, decision, step)
        if self._wd_base is not None:
            control.couple_weight_decay(self._optimizer, self._wd_base)
        self._log_transients(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._watch is self._own_watch:
            self._own_watch.on_train_end(trainer, pl_module)
        self._log_transients(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if self._watch is self._own_watch:
            self._own_watch.on_exception(trainer, pl_module, exception)

    def teardown(self, trainer, pl_module, stage) -> None:
        super().teardown(trainer, pl_module, stage)
        self._own_watch.teardown(trainer, pl_module, stage)

    # -- actions ---------------------------------------------------------------------------------
    def _last_analyzed(self) -> int | None:
        return self._watch.last_step() if self._watch is not None else None

    def _apply(self, trainer, decision: str, step: int) -> None:
        if decision == "drop":
            if not control.can_drop(self._scheduler):  # e.g. a multistep schedule with no milestone left
                return
            before = [g["lr"] for g in self._optimizer.param_groups]
            factor = control.drop_now(self._optimizer, self._scheduler, self._factor, self.min_lr)
            self._drops_taken += 1
            self._on_lr_change(before, step)
            reason = f"lr_too_high: next drop taken early (x{factor:.3g})"
        elif decision == "hold":
            self._holding, self._postponed = True, False
            reason = "decay_too_aggressive: scheduled decreases held back"
        else:
            self._holding = False
            reason = "hold released"
        lr = self._optimizer.param_groups[0]["lr"]
        action = Action(step + 1, decision, reason, lr)
        self.actions.append(action)
        if trainer.is_global_zero:
            value = lr if decision == "drop" else float(decision == "hold")
            log_metrics(trainer, {tags.action_tag(decision if decision == "drop" else "hold"): value}, action.step)
            self._write_text(trainer, action.step)
            rank_zero_warn(f"EarlyStepDrop at step {action.step}: {reason}; lr now {lr:.3g}.")

    def _on_lr_change(self, before: list[float], step: int) -> None:
        """At any drop of the lr (ours or the schedule's): the cooldown restarts and the optimizer
        state is handled."""
        after = [g["lr"] for g in self._optimizer.param_groups]
        if not before or not all(b > 0 and a < DROP_RATIO * b for a, b in zip(after, before)):
            return
        self._last_drop_step = step
        if self.momentum == "reset":
            control.reset_momentum(self._optimizer)
        elif self.momentum == "damp":
            self._damping = control.MomentumDamping(self.damp_beta, self.damp_steps)
            self._damping.apply(self._optimizer)

    @property
    def transients(self) -> list[tuple[int, float]]:
        """(step, m after each lr drop / (γ · m before)): 1 = no overshoot; see `lrwatch.interactions`."""
        if self._watch is None or self._optimizer is None:
            return []
        return self._watch.transients(self._watch.names()[self.optimizer_index])

    def _log_transients(self, trainer) -> None:
        """With its private (non-logging) LRWatch, log the transients here, so they are seen."""
        transients = self.transients
        if self._watch is self._own_watch and trainer.is_global_zero:
            for step, ratio in transients[self._transients_logged:]:
                log_metrics(trainer, {tags.MOMENTUM_TRANSIENT: ratio}, step)
        self._transients_logged = len(transients)

    def _write_text(self, trainer, step: int) -> None:
        lines = ["| step | action | lr after | reason |", "|---|---|---|---|"]
        lines += [f"| {a.step} | {a.kind} | {a.lr:.3g} | {a.reason} |" for a in self.actions[-50:]]
        for experiment in summary_writers(trainer):
            experiment.add_text(tags.action_tag("summary"), "\n".join(lines), step)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "actions": [a.to_dict() for a in self.actions],
            "drops_taken": self._drops_taken,
            "held_steps": self._held_steps,
            "holding": self._holding,
            "postponed": self._postponed,
            "last_drop_step": self._last_drop_step,
            "wd_base": self._wd_base,
            "factor": self._factor,
            # a damping in progress: the optimizer's own state (saved beside) holds the reduced β, so the
            # resumed run must still know when to restore it
            "damping": None if self._damping is None else asdict(self._damping),
            "own_watch": pickle.dumps(self._own_watch.state_dict()) if self._watch is self._own_watch else None,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.actions = [Action(**a) for a in state_dict["actions"]]
        self._drops_taken = state_dict["drops_taken"]
        self._held_steps = state_dict["held_steps"]
        self._holding = state_dict["holding"]
        self._postponed = state_dict.get("postponed", False)  # absent from checkpoints written before it existed
        self._last_drop_step = state_dict["last_drop_step"]
        self._wd_base = state_dict["wd_base"]
        self._factor = state_dict["factor"]
        damping = state_dict.get("damping")
        self._damping = None if damping is None else control.MomentumDamping(**damping)
        if state_dict.get("own_watch") is not None:
            self._own_watch.load_state_dict(pickle.loads(state_dict["own_watch"]))
        self._state_loaded()
