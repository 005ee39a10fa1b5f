"""Shared pieces of the Lightning overhead benchmarks: a step timer and a synthetic-data MLP."""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import lrwatch
from lrwatch._lightning import Callback, pl

OVERHEAD_ARMS = {
    "bare": lambda: [],
    "LearningRateMonitor": lambda: [pl.callbacks.LearningRateMonitor(logging_interval="step")],
    "LRWatch()": lambda: [lrwatch.LRWatch()],
    "LRWatch(log=False, diagnose=False)": lambda: [lrwatch.LRWatch(log=False, diagnose=False)],
    "LRWatch(every_n_steps=10)": lambda: [lrwatch.LRWatch(every_n_steps=10)],
}
"""The arms both overhead benchmarks compare: each makes a fresh callback list per fit."""


def size_arguments(parser, *, repeats: int, steps: int, warmup: int, batch: int, width: int, depth: int):
    """The benchmark-size options shared by the overhead scripts, with per-script defaults."""
    for name, default in (("repeats", repeats), ("steps", steps), ("warmup", warmup), ("batch", batch),
                          ("width", width), ("depth", depth)):
        parser.add_argument(f"--{name}", type=int, default=default)
    return parser


class StepTimer(Callback):
    """Wall time between consecutive training-batch starts, i.e. one whole step including every
    callback's work after it. ``synchronize`` waits for the device first (timing only)."""

    def __init__(self, synchronize: bool = False):
        self.synchronize = synchronize
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.synchronize:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


class MLP(pl.LightningModule):
    """width x width layers; parameters = depth * width^2 (+ biases). Adam over them all, or with
    ``per_parameter_groups`` AdamW with one param group per parameter, each at its own lr (layer-wise lr
    decay taken to its extreme: 2·depth groups)."""

    def __init__(self, width: int, depth: int, lr: float = 1e-4, per_parameter_groups: bool = False):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
        self.net = torch.nn.Sequential(*layers[:-1])
        self.lr, self.per_parameter_groups = lr, per_parameter_groups

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self.net(x) - x).square().mean()

    def configure_optimizers(self):
        if self.per_parameter_groups:
            groups = [{"params": [p], "lr": self.lr * 0.95**i} for i, p in enumerate(self.parameters())]
            return torch.optim.AdamW(groups, weight_decay=0.01)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def synthetic_loader(width: int, batch: int, steps: int, device: str = "cpu") -> DataLoader:
    """`steps` batches of Gaussian inputs, generated once, no shuffling, no workers."""
    x = torch.randn(batch * steps, width, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x.to(device)), batch_size=batch, shuffle=False)


def fit_once(model, loader, callbacks, steps: int, warmup: int, **trainer_kwargs) -> np.ndarray:
    """Per-step times of one fit, after `warmup` steps. Every arm logs to a throw-away TensorBoard
    directory, so logging costs are part of what is measured."""
    timer = StepTimer(synchronize=trainer_kwargs.get("accelerator") == "gpu")
    logdir = tempfile.mkdtemp(prefix="lrwatch-bench-")
    trainer = pl.Trainer(
        max_steps=steps, logger=pl.loggers.TensorBoardLogger(logdir), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer, *callbacks], **trainer_kwargs,
    )
    try:
        trainer.fit(model, loader)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return np.array(timer.times[warmup:])


def interleaved(arms: dict, make_model, loader, repeats: int, steps: int, warmup: int, **trainer_kwargs) -> dict:
    """Run every arm once per repeat, rotating the order each repeat; return per-arm step times."""
    names = list(arms)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(fit_once(make_model(), loader, arms[name](), steps, warmup, **trainer_kwargs))
    return {name: np.concatenate(t) for name, t in times.items()}


def ratio_table(times: dict, baseline: str) -> str:
    """Median and mean step time per arm and their ratios to the baseline's. The median is the step
    itself; the mean also carries the work done once a flush (every ``flush_every`` steps: logging,
    diagnosis), which the median leaves out: it is the cost per step of leaving the callback on."""
    base_median, base_mean = np.median(times[baseline]), np.mean(times[baseline])
    rows = [f"| arm | median step (ms) | mean step (ms) | median ÷ {baseline}'s | mean ÷ {baseline}'s |",
            "|---|---|---|---|---|"]
    for name, t in times.items():
        rows.append(f"| {name} | {1e3 * np.median(t):.2f} | {1e3 * np.mean(t):.2f} | {np.median(t) / base_median:.3f} "
                    f"| {np.mean(t) / base_mean:.3f} |")
    return "\n".join(rows)
