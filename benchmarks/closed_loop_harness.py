"""One arm of the closed-loop benchmark: a Lightning fit of a corpus task under one lr policy.

An *arm* is how the lr is driven during a run of ``n_steps`` optimizer updates:

* ``"step"``: a fixed ``StepLR(step_size, gamma)``, stepped after every update;
* ``"plateau"``: torch's ``ReduceLROnPlateau`` on the training loss (see ``PlateauSettings``);
* ``"early_drop"``: the same ``StepLR`` as ``"step"`` with ``lrwatch.EarlyStepDrop`` attached;
* ``"milestones"``: ``MultiStepLR(milestones, gamma)``: drops at chosen steps only (the oracle study's
  "what if the drop had come at step t").

Every arm of a (setup, seed) sees the same initial weights and the same minibatch sequence
(``corpus_runs.minibatch_indices``), so two arms differ only where their lrs differ: until
EarlyStepDrop first acts, its run is the fixed ``"step"`` run exactly. The full-data loss is
evaluated before the first update and after every ``eval_every``-th update (`FullLossProbe`).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from corpus_runs import minibatch_indices
from corpus_tasks import Task, build_optimizer
from lrwatch._lightning import Callback, pl

ARMS = ("step", "plateau", "early_drop", "milestones")


def quiet_lightning() -> None:
    """Silence Lightning's per-fit banners (device summary, tips), which would drown the tables."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class PlateauSettings:
    """How the ``"plateau"`` arm drives ``ReduceLROnPlateau``.

    The monitored value is ``train_loss``: the mean minibatch loss over the last ``window`` updates,
    logged by the module at every update; the scheduler reads it every ``window`` updates, so it sees
    consecutive, non-overlapping windows (a per-update minibatch loss is too noisy to compare with
    its own running minimum). ``patience`` is counted in windows; ``threshold`` is relative
    (``threshold_mode="rel"``), ``factor`` multiplies the lr at each reduction.
    """

    window: int
    factor: float
    patience: int
    threshold: float


@dataclass
class ArmResult:
    """Outcome of one arm. ``eval_steps``/``eval_losses``: shape (n_evals,), the full-data loss after
    that many updates (``inf`` once not finite); ``lrs``: shape (n_steps,), the lr each update used;
    ``actions``: EarlyStepDrop's ``Action.to_dict()`` records; ``diagnoses``: the ``Diagnosis.to_dict()``
    records of the LRWatch it acted on (both empty for the other arms)."""

    eval_steps: np.ndarray
    eval_losses: np.ndarray
    lrs: np.ndarray
    seconds: float
    actions: list[dict] = field(default_factory=list)
    diagnoses: list[dict] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return float(self.eval_losses[-1])

    def steps_to_reach(self, target: float) -> int | None:
        """First evaluated step whose full-data loss is at or below ``target``; None if none is."""
        hits = np.flatnonzero(self.eval_losses <= target)
        return int(self.eval_steps[hits[0]]) if len(hits) else None


class _Minibatches(Dataset):
    """The fixed sequence of minibatches: item i is the i-th update's (inputs, targets)."""

    def __init__(self, task: Task, indices: np.ndarray):
        self.task, self.indices = task, torch.as_tensor(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        batch = self.indices[i]
        return self.task.inputs[batch], self.task.targets[batch]


class _TaskModule(pl.LightningModule):
    """The task's model, trained with the task's loss; ``configure`` builds optimizer and scheduler."""

    def __init__(self, task: Task, seed: int, optimizer: str, lr: float, arm: str, step_size: int, gamma: float,
                 plateau: PlateauSettings, milestones: tuple[int, ...]):
        super().__init__()
        self.task, self.net = task, task.build_model(seed)
        self.optimizer_kind, self.lr, self.arm = optimizer, lr, arm
        self.step_size, self.gamma, self.plateau, self.milestones = step_size, gamma, plateau, milestones
        self._recent: list[torch.Tensor] = []  # minibatch losses of the current plateau window

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = self.task.loss(self.net(inputs), targets)
        if self.arm == "plateau":
            self._recent = [*self._recent[-(self.plateau.window - 1):], loss.detach()]
            self.log("train_loss", torch.stack(self._recent).mean(), on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_kind, self.parameters(), self.lr)
        if self.arm == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=self.plateau.factor, patience=self.plateau.patience,
                threshold=self.plateau.threshold, threshold_mode="rel",
            )
            config = {"scheduler": scheduler, "interval": "step", "frequency": self.plateau.window,
                      "monitor": "train_loss"}
        elif self.arm == "milestones":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(self.milestones),
                                                             gamma=self.gamma)
            config = {"scheduler": scheduler, "interval": "step"}
        else:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)
            config = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": config}


class FullLossProbe(Callback):
    """Full-data loss before training and after every ``every``-th update, plus the lr of each update."""

    def __init__(self, task: Task, every: int):
        self.task, self.every = task, every
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []

    def _evaluate(self, pl_module, step: int) -> None:
        self.steps.append(step)
        self.losses.append(self.task.full_loss(pl_module.net))

    def on_train_start(self, trainer, pl_module) -> None:
        self._evaluate(pl_module, 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._evaluate(pl_module, trainer.global_step)


def run_arm(task: Task, optimizer: str, lr: float, seed: int, arm: str, n_steps: int, step_size: int, gamma: float,
            plateau: PlateauSettings, eval_every: int, early_drop_options: dict | None = None,
            milestones: tuple[int, ...] = ()) -> ArmResult:
    """Train one arm for ``n_steps`` updates (``n_steps`` a multiple of ``eval_every``) and return its record.

    ``step_size``/``gamma``: the StepLR of the ``"step"`` and ``"early_drop"`` arms (unused by
    ``"plateau"``); ``early_drop_options``: keyword arguments of ``lrwatch.EarlyStepDrop`` (its
    ``watch`` options go to the attached LRWatch, which EarlyStepDrop then uses instead of its own);
    ``milestones``: the ``"milestones"`` arm's drops, each k meaning that updates k + 1, k + 2, …
    (1-based) use the lr × ``gamma`` once more (the scheduler is stepped after every update, as
    StepLR's ``step_size`` k drops after update k).
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    if n_steps % eval_every:
        raise ValueError(f"n_steps must be a multiple of eval_every={eval_every}, got {n_steps!r}")
    indices = minibatch_indices(len(task.inputs), task.batch_size, n_steps, seed)
    loader = DataLoader(_Minibatches(task, indices), batch_size=None, shuffle=False)
    probe = FullLossProbe(task, eval_every)
    callbacks: list[Callback] = [probe]
    if arm == "early_drop":
        import lrwatch  # the diagnosis layer is needed only by this arm

        # The LRWatch EarlyStepDrop would create for itself (same options; an attached one replaces its
        # own), attached so that its report can be read afterwards, and first so that it has published a
        # step before EarlyStepDrop decides.
        options = early_drop_options or {}
        watch = lrwatch.LRWatch(**{"log": False, "warn": False, **options.get("watch", {})})
        early_drop = lrwatch.EarlyStepDrop(**options)
        callbacks += [watch, early_drop]
    if arm == "milestones" and not milestones:
        raise ValueError("the milestones arm needs at least one milestone, got none")
    module = _TaskModule(task, seed, optimizer, lr, arm, step_size, gamma, plateau, milestones)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=n_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # Lightning's own, harmless
        warnings.filterwarnings("ignore", message="EarlyStepDrop at step.*")  # its actions are read from .actions
        trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    return ArmResult(
        eval_steps=np.array(probe.steps),
        eval_losses=np.array(probe.losses),
        lrs=np.array(probe.lrs),
        seconds=seconds,
        actions=[a.to_dict() for a in early_drop.actions] if arm == "early_drop" else [],
        diagnoses=[d.to_dict() for d in watch.report.diagnoses] if arm == "early_drop" else [],
    )
