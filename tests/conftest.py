"""Shared test fixtures: tiny real models on bundled data, a logger that records what was logged,
and an independent reference recorder of parameters and lrs at each optimizer step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import lrwatch
from lrwatch._lightning import Callback, pl

torch.set_num_threads(1)


class ForcedDrop(lrwatch.EarlyStepDrop):
    """EarlyStepDrop that takes the given decisions at the given steps instead of reading diagnoses."""

    def __init__(self, plan: dict[int, str], **kwargs):
        super().__init__(decide_every=1, **kwargs)
        self.plan = plan

    def decide(self, report, step, last_analyzed):
        return self.plan.get(step)


def digits_loader(batch_size: int = 64, n: int = 512) -> DataLoader:
    """The first n of scikit-learn's bundled 8x8 digits, standardised; a fixed order (no shuffle)."""
    x, y = load_digits(return_X_y=True)
    x = (x[:n] - x[:n].mean(0)) / (x[:n].std(0) + 1e-6)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y[:n]))
    return DataLoader(data, batch_size=batch_size, shuffle=False)


class DigitsMLP(pl.LightningModule):
    """64 -> hidden -> 10 classifier; optimizer and scheduler chosen by name for the tests."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.1, hidden: int = 32, scheduler: str | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10))
        self.optimizer_name, self.lr, self.scheduler_name = optimizer, lr, scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        first, second = self.net[0].parameters(), self.net[2].parameters()
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        elif self.optimizer_name == "sgd_momentum_groups":
            opt = torch.optim.SGD(
                [{"params": first, "lr": self.lr, "name": "body"}, {"params": second, "lr": self.lr / 4}],
                momentum=0.9,
            )
        elif self.optimizer_name == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        else:
            raise ValueError(self.optimizer_name)
        if self.scheduler_name == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt


class TwoOptimizerGAN(pl.LightningModule):
    """Manual optimization with two optimizers over disjoint parameters (a GAN-shaped loop)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.gen = torch.nn.Linear(64, 64)
        self.disc = torch.nn.Linear(64, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_g, opt_d = self.optimizers()
        loss_d = torch.nn.functional.cross_entropy(self.disc(x), y)
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        loss_g = -torch.nn.functional.cross_entropy(self.disc(self.gen(x)), y)
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        return loss_d.detach()

    def configure_optimizers(self):
        return [torch.optim.Adam(self.gen.parameters(), lr=1e-3), torch.optim.SGD(self.disc.parameters(), lr=0.05)]


class RecordingLogger(pl.loggers.Logger):
    """Keeps every log_metrics call: {tag: [(step, value), ...]}."""

    def __init__(self):
        super().__init__()
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        for tag, value in metrics.items():
            self.metrics.setdefault(tag, []).append((step, float(value)))

    def series(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        steps, values = zip(*self.metrics[tag])
        return np.array(steps), np.array(values)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, detached: a DTensor (FSDP2) is gathered from every rank that holds a part."""
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class ReferenceRecorder(Callback):
    """Independent reference: the flat float64 parameter vector of each optimizer before every one of
    its steps (Lightning's on_before_optimizer_step) and at the end, plus the lrs, the flat gradient
    (zeros where a parameter has none) and its norm."""

    def __init__(self):
        self.before: dict[int, list[torch.Tensor]] = {}
        self.grads: dict[int, list[torch.Tensor]] = {}
        self.lrs: dict[int, list[list[float]]] = {}
        self.grad_norms: dict[int, list[float]] = {}
        self.final: dict[int, torch.Tensor] = {}

    @staticmethod
    def _flat(optimizer, attr=None):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if attr == "grad":
            return torch.cat([_full(p.grad).double().flatten() for p in params if p.grad is not None] or [torch.zeros(0)])
        return torch.cat([_full(p).double().flatten() for p in params] or [torch.zeros(0)])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        key = next(i for i, o in enumerate(trainer.optimizers) if o is optimizer or o is getattr(optimizer, "optimizer", None))
        self.before.setdefault(key, []).append(self._flat(optimizer).clone())
        self.lrs.setdefault(key, []).append([g["lr"] for g in optimizer.param_groups])
        self.grad_norms.setdefault(key, []).append(float(self._flat(optimizer, "grad").norm()))
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.grads.setdefault(key, []).append(torch.cat(
            [(_full(p.grad) if p.grad is not None else torch.zeros(p.shape)).double().flatten() for p in params]
            or [torch.zeros(0)]))

    def on_train_end(self, trainer, pl_module):
        for i, opt in enumerate(trainer.optimizers):
            self.final[i] = self._flat(opt).clone()

    def displacements(self, key: int = 0) -> np.ndarray:
        vectors = self.before[key] + [self.final[key]]
        return np.array([float((b - a).norm()) for a, b in zip(vectors[:-1], vectors[1:])])

    def descents(self, key: int = 0) -> np.ndarray:
        """−⟨w_t − w_{t−1}, g_t⟩ of every step, in float64."""
        vectors = self.before[key] + [self.final[key]]
        return np.array([-float((b - a) @ g) for a, b, g in zip(vectors[:-1], vectors[1:], self.grads[key])])


class RankDependentDrop(lrwatch.EarlyStepDrop):
    """An EarlyStepDrop that would drop after step ``first + spacing * r`` on rank r if ranks decided alone:
    the ranks agree only if they all follow rank zero."""

    def __init__(self, first: int, spacing: int, **options):
        super().__init__(**options)
        self.first, self.spacing = first, spacing

    def decide(self, report, step, last_analyzed):
        return "drop" if step == self.first + self.spacing * torch.distributed.get_rank() else None


class SaveRankRecords(Callback):
    """For multi-process runs: per rank, at the end of training, to ``folder``/rank<r>.npz — LRWatch's
    records (steps, displacement, descent, grad_norm), the ReferenceRecorder's independent figures
    (reference, reference_descent, reference_grad_norm), each step's lrs per group (lrs, (n, groups)) and
    the ``lrwatch/displacement`` values the rank's logger received (logged, (k, 2): step, value; empty
    without a RecordingLogger). Needs an LRWatch and a ReferenceRecorder among the callbacks.

    At teardown it destroys the process group: Lightning does so at exit only for NCCL, and a gloo group
    left alive meets interpreter shutdown, which now and then aborts a process ("terminate called
    without an active exception") after its work is done. No barrier: a rank that failed must not leave
    the others waiting."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        watch = next(cb for cb in trainer.callbacks if isinstance(cb, lrwatch.LRWatch))
        watch.on_train_end(trainer, pl_module)  # flush now: this callback may run first
        reference = next(cb for cb in trainer.callbacks if isinstance(cb, ReferenceRecorder))
        reference.on_train_end(trainer, pl_module)  # with DTensors a gather: a collective on every rank
        records = watch.records()
        logged = getattr(trainer.logger, "metrics", {}).get("lrwatch/displacement", [])
        np.savez(
            f"{self.folder}/rank{trainer.global_rank}.npz", steps=records.steps, displacement=records.displacement,
            descent=records.descent, grad_norm=records.grad_norm, reference=reference.displacements(),
            reference_descent=reference.descents(), reference_grad_norm=np.array(reference.grad_norms[0]),
            lrs=np.array(reference.lrs[0]), logged=np.array(logged, dtype=float).reshape(-1, 2),
        )

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class LateRestore(pl.strategies.SingleDeviceStrategy):
    """A CPU strategy that restores callbacks from a checkpoint after ``on_fit_start``, as FSDPStrategy,
    ModelParallelStrategy and DeepSpeedStrategy do (their ``restore_checkpoint_after_setup``)."""

    def __init__(self):
        super().__init__(device=torch.device("cpu"))

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


@pytest.fixture
def recording_logger():
    return RecordingLogger()


def make_trainer(callbacks, logger, max_steps: int = 20, **kwargs) -> pl.Trainer:
    """A quiet CPU trainer for tests."""
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
