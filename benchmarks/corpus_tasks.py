"""The tasks of the diagnosis corpus: bundled or generated scikit-learn data, tiny torch models.

Nothing here downloads: every data set is either shipped with scikit-learn (``load_*``) or generated
from a fixed ``random_state`` (``make_*``). Inputs are standardised per feature (zero mean, unit
variance over the whole data set) so one learning-rate scale fits all tasks; regression targets are
standardised too, so a mean-squared error of 1.0 is what predicting the mean gives.

A task fixes the data, the model architecture, the loss, the minibatch size and the run length; the
run (``corpus_runs.RunSpec``) picks optimizer, schedule and seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from sklearn import datasets

#: Data-set generator seed for the ``make_*`` tasks; run seeds vary init and data order, not the data.
DATA_SEED = 0

#: Decoupled weight decay of the "adamw" optimizer (per unit lr, torch's convention).
ADAMW_WEIGHT_DECAY = 1e-2

#: Momentum coefficient of the "momentum" optimizer (heavy ball, torch's convention).
SGD_MOMENTUM = 0.9

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


@dataclass(frozen=True)
class Task:
    """One learning problem: full data on the host, plus how to build a model for it.

    ``inputs``: float32, shape (n_samples, n_features), standardised.
    ``targets``: int64 class labels, shape (n_samples,), for ``loss_kind == "cross_entropy"``;
    float32, shape (n_samples, 1), standardised, for ``loss_kind == "mse"``.
    ``hidden``: widths of the ReLU hidden layers; ``()`` is a linear model (logistic / linear regression).
    """

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    loss_kind: str
    hidden: tuple[int, ...]
    n_steps: int
    batch_size: int

    @property
    def n_outputs(self) -> int:
        """Model output width: number of classes, or 1 for regression."""
        if self.loss_kind == "mse":
            return 1
        return int(self.targets.max()) + 1

    def build_model(self, seed: int) -> torch.nn.Module:
        """A fresh model whose initial weights depend only on ``seed``."""
        torch.manual_seed(seed)
        widths = (self.inputs.shape[1], *self.hidden, self.n_outputs)
        layers: list[torch.nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if i < len(widths) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch: cross-entropy (nats) or mean squared error (standardised units)."""
        if self.loss_kind == "cross_entropy":
            return torch.nn.functional.cross_entropy(outputs, targets)
        return torch.nn.functional.mse_loss(outputs, targets)

    @torch.no_grad()
    def full_loss(self, model: torch.nn.Module) -> float:
        """Loss on the whole data set; ``inf`` when it is not finite (a diverged model)."""
        value = float(self.loss(model(self.inputs), self.targets))
        return value if np.isfinite(value) else float("inf")


def _standardise(values: np.ndarray) -> np.ndarray:
    """Per-column zero mean and unit variance; constant columns become zero."""
    scale = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def _classification(name, x, y, hidden, n_steps, batch_size) -> Task:
    return Task(
        name=name,
        inputs=torch.as_tensor(_standardise(x), dtype=torch.float32),
        targets=torch.as_tensor(y, dtype=torch.int64),
        loss_kind="cross_entropy",
        hidden=hidden,
        n_steps=n_steps,
        batch_size=batch_size,
    )


def _regression(name, x, y, hidden, n_steps, batch_size) -> Task:
    return Task(
        name=name,
        inputs=torch.as_tensor(_standardise(x), dtype=torch.float32),
        targets=torch.as_tensor(_standardise(y.reshape(-1, 1)), dtype=torch.float32),
        loss_kind="mse",
        hidden=hidden,
        n_steps=n_steps,
        batch_size=batch_size,
    )


def _digits() -> Task:
    d = datasets.load_digits()
    return _classification("digits", d.data, d.target, (32,), 500, 32)


def _breast_cancer() -> Task:
    d = datasets.load_breast_cancer()
    return _classification("breast_cancer", d.data, d.target, (), 400, 32)


def _wine() -> Task:
    d = datasets.load_wine()
    return _classification("wine", d.data, d.target, (16,), 300, 16)


def _clusters() -> Task:
    x, y = datasets.make_classification(
        n_samples=1500, n_features=20, n_informative=10, n_redundant=4, n_classes=4,
        class_sep=1.0, flip_y=0.02, random_state=DATA_SEED,
    )
    return _classification("clusters", x, y, (32,), 450, 32)


def _linear_regression() -> Task:
    x, y = datasets.make_regression(
        n_samples=1000, n_features=20, n_informative=12, effective_rank=5, tail_strength=0.5,
        noise=2.0, random_state=DATA_SEED,
    )
    return _regression("linreg", x, y, (), 400, 32)


def _moons() -> Task:
    x, y = datasets.make_moons(n_samples=1000, noise=0.25, random_state=DATA_SEED)
    return _classification("moons", x, y, (32, 32), 350, 32)


_BUILDERS = {
    "digits": _digits,
    "breast_cancer": _breast_cancer,
    "wine": _wine,
    "clusters": _clusters,
    "linreg": _linear_regression,
    "moons": _moons,
}

TASK_NAMES = tuple(_BUILDERS)


@functools.cache
def load_task(name: str) -> Task:
    """The task called ``name`` (one of ``TASK_NAMES``), built once per process."""
    if name not in _BUILDERS:
        raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")
    return _BUILDERS[name]()


def build_optimizer(kind: str, params, lr: float) -> torch.optim.Optimizer:
    """One of ``OPTIMIZERS`` at learning rate ``lr``, with the module's fixed other hyper-parameters."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if kind == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=ADAMW_WEIGHT_DECAY)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
